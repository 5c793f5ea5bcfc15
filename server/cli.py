"""``ridgeline server``: run the server (REST API, message system, /healthz)."""

from __future__ import annotations

import argparse

from server import config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config.add_service_options(parser, config.SERVER_OPTIONS, secrets=("registration_key", "database_password"))


def run(args: argparse.Namespace) -> int:
    from twisted.internet import reactor

    from server import service

    return config.run_service("server", args, lambda cfg: service.run(cfg, reactor),
                              check=lambda cfg: service.check_listening_config(reactor, cfg))
