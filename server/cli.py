"""``ridgeline server``: run the server (REST API, message system, /healthz)."""

from __future__ import annotations

import argparse

from server import config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Every option can also be set in the config file ([server] section) or as "
        "RIDGELINE_<OPTION> in the environment; secrets (registration_key, "
        "database_password) only there. See docs/server.md."
    )
    config.add_options(parser, config.SERVER_OPTIONS)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config.load(args)
    except config.ConfigError as e:
        return config.report_error("server", e)
    from twisted.internet import reactor

    from server import logsetup, service

    try:
        service.check_listening_config(reactor, cfg)
    except config.ConfigError as e:
        return config.report_error("server", e)
    logsetup.start_logging(cfg.log_level)
    return service.run(cfg, reactor)
