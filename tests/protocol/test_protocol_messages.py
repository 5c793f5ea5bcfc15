"""protocol.messages: schemas (first bad field named), both register shapes, builders."""

from __future__ import annotations

import pytest

from protocol import bpickle, codes
from protocol import messages as m
from protocol.messages import MessageError, validate_client_message, validate_server_message


def _error(validate, message) -> MessageError:
    with pytest.raises(MessageError) as info:
        validate(message)
    assert isinstance(info.value, ValueError)
    assert info.value.field in str(info.value)
    return info.value


# --- register: both observed shapes --------------------------------------------------------

# landscape-config's bare registration message, exactly as observed (spec §4.2).
CONFIG_REGISTER = {
    "access_group": "mygroup",
    "account_name": "testacct",
    "computer_title": "testbox",
    "container_info": "",
    "hostname": "vm",
    "machine_id": "5923867a-0000-5000-8000-000000000000",
    "registration_password": "sekret",
    "tags": "web, prod",
    "type": "register",
    "ubuntu_pro_info": "{}",
    "vm_info": b"",
}

# The broker's register message (REGISTER_3_3 schema, spec §4.1).
BROKER_REGISTER = {
    "type": "register",
    "account_name": "standalone",
    "computer_title": "web-01",
    "hostname": "web-01.example.com",
    "registration_password": None,
    "tags": None,
    "container-info": "lxc",
    "vm-info": b"kvm",
    "ubuntu_pro_info": "{}",
    "api": b"3.3",
    "timestamp": 1700000000,
}


def test_config_register_is_normalised():
    out = validate_client_message(bpickle.loads(bpickle.dumps(CONFIG_REGISTER)))
    assert out["type"] == "register"
    assert out["account_name"] == "testacct"
    assert out["computer_title"] == "testbox"
    assert out["hostname"] == "vm"
    assert out["registration_password"] == "sekret"
    assert out["tags"] == ["web", "prod"]
    assert out["container_info"] == ""
    assert out["vm_info"] == ""
    assert out["access_group"] == "mygroup"
    assert out["machine_id"] == "5923867a-0000-5000-8000-000000000000"
    assert out["ubuntu_pro_info"] == "{}"
    assert out["clone_secure_id"] is None
    assert "api" not in out and "timestamp" not in out
    assert not any("-" in key for key in out)


def test_broker_register_is_normalised_to_the_same_shape():
    out = validate_client_message(BROKER_REGISTER)
    assert out["container_info"] == "lxc"
    assert out["vm_info"] == "kvm"  # bytes on the wire
    assert out["tags"] == []
    assert out["registration_password"] is None
    assert out["api"] == b"3.3" and out["timestamp"] == 1700000000
    config = validate_client_message(CONFIG_REGISTER)
    assert set(out) - {"api", "timestamp"} == set(config)


def test_register_with_bytes_type_and_clone_secure_id():
    message = dict(BROKER_REGISTER, type=b"register", clone_secure_id="OLD-SECURE-ID")
    out = validate_client_message(message)
    assert out["type"] == "register" and out["clone_secure_id"] == "OLD-SECURE-ID"


@pytest.mark.parametrize("field", ["account_name", "computer_title", "hostname"])
def test_register_required_fields(field):
    message = dict(CONFIG_REGISTER)
    del message[field]
    error = _error(validate_client_message, message)
    assert (error.message_type, error.field) == ("register", field)


def test_register_bad_fields_are_named():
    assert _error(validate_client_message, dict(CONFIG_REGISTER, tags="ok, not ok!")).field == "tags"
    assert _error(validate_client_message, dict(CONFIG_REGISTER, vm_info=b"\xff")).field == "vm_info"
    assert _error(validate_client_message, dict(BROKER_REGISTER, **{"container-info": 5})).field == "container-info"
    assert _error(validate_client_message, dict(CONFIG_REGISTER, account_name=None)).field == "account_name"
    # The first bad field in schema order is the one reported.
    error = _error(validate_client_message, dict(CONFIG_REGISTER, account_name=1, hostname=2))
    assert error.field == "account_name"


def test_register_builder_makes_the_broker_shape():
    message = m.register(
        "standalone", "web-01", "web-01.example.com", tags=["web", "prod"], vm_info=b"kvm", api=b"3.3", timestamp=5
    )
    assert message["container-info"] == "" and message["vm-info"] == b"kvm"
    assert message["tags"] == "web, prod" and message["api"] == b"3.3"
    out = validate_client_message(bpickle.loads(bpickle.dumps(message)))
    assert out["tags"] == ["web", "prod"] and out["vm_info"] == "kvm"


# --- operation-result and client resynchronize ------------------------------------------------


def test_operation_result_round_trip():
    message = m.operation_result(12, codes.FAILED, result_text="boom\n", result_code=codes.SCRIPT_FAILED)
    assert message == {
        "type": "operation-result",
        "operation-id": 12,
        "status": 5,
        "result-text": "boom\n",
        "result-code": 103,
    }
    out = validate_client_message(bpickle.loads(bpickle.dumps(message)))
    assert out["operation-id"] == 12 and out["status"] == 5
    assert out["result-code"] == 103 and out["result-text"] == "boom\n"
    assert out["api"] is None and out["timestamp"] is None


def test_operation_result_optional_fields_default_to_none():
    out = validate_client_message({"type": "operation-result", "operation-id": 1, "status": 6})
    assert out["result-code"] is None and out["result-text"] is None
    assert "result-text" not in m.operation_result(1, codes.SUCCEEDED)


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"type": "operation-result", "status": 6}, "operation-id"),
        ({"type": "operation-result", "operation-id": "7", "status": 6}, "operation-id"),
        ({"type": "operation-result", "operation-id": True, "status": 6}, "operation-id"),
        ({"type": "operation-result", "operation-id": 7}, "status"),
        ({"type": "operation-result", "operation-id": 7, "status": 4}, "status"),
        ({"type": "operation-result", "operation-id": 7, "status": 6, "result-code": "x"}, "result-code"),
        ({"type": "operation-result", "operation-id": 7, "status": 6, "result-text": 5}, "result-text"),
        ({"type": "operation-result", "operation-id": 7, "status": 6, "api": 3.3}, "api"),
        ({"operation-id": 7, "status": 6}, "type"),
        ({"type": 5}, "type"),
        ({"type": ""}, "type"),
    ],
)
def test_operation_result_first_bad_field(message, field):
    assert _error(validate_client_message, message).field == field


def test_operation_result_builder_refuses_bad_status():
    assert _error(lambda _: m.operation_result(1, 7), None).field == "status"


def test_client_resynchronize_needs_no_operation_id():
    assert validate_client_message({"type": "resynchronize"})["operation-id"] is None
    assert validate_client_message({"type": "resynchronize", "operation-id": 9})["operation-id"] == 9


def test_unknown_client_type_is_kept_not_refused():
    out = validate_client_message({"type": b"computer-info", "hostname": "x"})
    assert out == {"type": "computer-info", "hostname": "x"}
    assert "computer-info" not in m.CLIENT_MESSAGE_TYPES


def test_a_message_must_be_a_dict():
    assert _error(validate_client_message, ["type", "register"]).field == "type"


# --- server → client -------------------------------------------------------------------------


def test_set_id_builder_and_schema():
    message = m.set_id(b"SECURE", 42)
    assert message == {"type": "set-id", "id": b"SECURE", "insecure-id": 42}
    assert bpickle.dumps(message) == b"du2:ids6:SECUREu11:insecure-idi42;u4:typeu6:set-id;"
    assert m.set_id("SECURE", 42)["id"] == b"SECURE"  # a str id still goes out as bytes
    assert validate_server_message({"type": "set-id", "id": "S", "insecure-id": 1})["id"] == b"S"
    assert _error(validate_server_message, {"type": "set-id", "insecure-id": 1}).field == "id"
    assert _error(validate_server_message, {"type": "set-id", "id": b"S"}).field == "insecure-id"


def test_unknown_id():
    assert m.unknown_id() == {"type": "unknown-id"}
    assert m.unknown_id("web-01") == {"type": "unknown-id", "clone-of": "web-01"}
    assert validate_server_message(m.unknown_id())["clone-of"] is None
    assert validate_server_message(m.unknown_id("web-01"))["clone-of"] == "web-01"
    assert _error(validate_server_message, {"type": "unknown-id", "clone-of": 3}).field == "clone-of"


def test_registration():
    assert m.registration("unknown-account") == {"type": "registration", "info": "unknown-account"}
    assert _error(validate_server_message, {"type": "registration"}).field == "info"
    assert _error(lambda _: m.registration(b"unknown-account"), None).field == "info"


def test_accepted_types_are_sorted_str():
    message = m.accepted_types(["set-id", "register", "register"])
    assert message == {"type": "accepted-types", "types": ["register", "set-id"]}
    assert bpickle.dumps(message["types"]) == b"lu8:registeru6:set-id;"
    assert validate_server_message({"type": "accepted-types", "types": [b"register"]})["types"] == ["register"]
    assert _error(validate_server_message, {"type": "accepted-types", "types": "register"}).field == "types"
    assert _error(validate_server_message, {"type": "accepted-types"}).field == "types"


def test_server_resynchronize_needs_operation_id():
    assert m.resynchronize(5) == {"type": "resynchronize", "operation-id": 5}
    assert m.resynchronize(5, ["process"])["scopes"] == ["process"]
    assert validate_server_message(m.resynchronize(5))["scopes"] is None
    assert _error(validate_server_message, {"type": "resynchronize"}).field == "operation-id"
    assert _error(validate_server_message, {"type": "resynchronize", "operation-id": 1, "scopes": 3}).field == "scopes"


def test_set_intervals():
    assert m.set_intervals(exchange=900, ping=30) == {"type": "set-intervals", "exchange": 900, "ping": 30}
    # The server never sends less than 10 s: landscape-client crashes below that.
    error = _error(lambda _: m.set_intervals(urgent_exchange=5), None)
    assert error.field == "urgent-exchange"
    # The agent itself accepts 1 s and more.
    out = validate_server_message({"type": "set-intervals", "exchange": 1})
    assert out == {"type": "set-intervals", "exchange": 1, "urgent-exchange": None, "ping": None}
    assert _error(validate_server_message, {"type": "set-intervals", "ping": 0}).field == "ping"
    assert _error(validate_server_message, {"type": "set-intervals", "ping": 1.5}).field == "ping"


def _script(**changes):
    message = {
        "type": "execute-script",
        "operation-id": 3,
        "interpreter": "/bin/sh",
        "code": "echo hi",
        "username": "nobody",
        "time-limit": 60,
        "attachments": {"data.txt": 77, "inline.txt": "text"},
        "env": {"FOO": "bar"},
    }
    message.update(changes)
    return {k: v for k, v in message.items() if v is not _DROP}


_DROP = object()


def test_execute_script_valid():
    out = validate_server_message(bpickle.loads(bpickle.dumps(_script())))
    assert out == _script()
    assert validate_server_message(_script(**{"time-limit": None, "env": _DROP}))["env"] is None
    built = m.execute_script(3, "/bin/sh", "echo hi", "nobody", 60, {"data.txt": 77, "inline.txt": "text"}, {"FOO": "bar"})
    assert built == _script()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"operation-id": _DROP}, "operation-id"),
        ({"interpreter": _DROP}, "interpreter"),
        ({"code": b"\xff"}, "code"),
        ({"username": None}, "username"),
        ({"time-limit": _DROP}, "time-limit"),  # the key is required even though None is fine
        ({"time-limit": -1}, "time-limit"),
        ({"time-limit": "60"}, "time-limit"),
        ({"attachments": _DROP}, "attachments"),
        ({"attachments": {"../x": 1}}, "attachments"),
        ({"attachments": {"x": 1.5}}, "attachments"),
        ({"env": {"A": 1}}, "env"),
        ({"env": {"A=B": "c"}}, "env"),
        ({"env": ["A"]}, "env"),
    ],
)
def test_execute_script_first_bad_field(changes, field):
    error = _error(validate_server_message, _script(**changes))
    assert (error.message_type, error.field) == ("execute-script", field)


def test_execute_script_builder_refuses_what_the_schema_refuses():
    with pytest.raises(MessageError) as info:
        m.execute_script(3, "/bin/sh", "true", "nobody", None, {"a/b": 1}, None)
    assert info.value.field == "attachments"


def test_cancel_activity_extension():
    assert m.cancel_activity(12) == {"type": "cancel-activity", "target-operation-id": 12}
    assert "operation-id" not in m.cancel_activity(12)
    assert validate_server_message(m.cancel_activity(12))["target-operation-id"] == 12
    assert _error(validate_server_message, {"type": "cancel-activity"}).field == "target-operation-id"
    assert m.RIDGELINE_EXTENSION_TYPES == {"cancel-activity"}
    assert m.RIDGELINE_EXTENSION_TYPES <= m.SERVER_MESSAGE_TYPES


def test_unknown_server_type_with_operation_id_is_returned():
    out = validate_server_message({"type": b"shutdown", "operation-id": 8, "reboot": True})
    assert out == {"type": "shutdown", "operation-id": 8, "reboot": True}
    assert _error(validate_server_message, {"type": "shutdown", "operation-id": "8"}).field == "operation-id"


def test_every_builder_output_passes_its_validator_after_the_wire():
    server_side = [
        m.set_id(b"S", 1),
        m.unknown_id("x"),
        m.registration("max-pending-computers"),
        m.accepted_types(["register", "set-id"]),
        m.resynchronize(1, ["users"]),
        m.set_intervals(10, 10, 10),
        m.execute_script(1, "/bin/sh", "true", "root", None, {}, None),
        m.cancel_activity(1),
    ]
    assert {msg["type"] for msg in server_side} == m.SERVER_MESSAGE_TYPES
    for message in server_side:
        assert type(validate_server_message(bpickle.loads(bpickle.dumps(message)))["type"]) is str
    client_side = [m.register("a", "b", "c"), m.operation_result(1, 6), {"type": "resynchronize"}]
    assert {msg["type"] for msg in client_side} == m.CLIENT_MESSAGE_TYPES
    for message in client_side:
        validate_client_message(bpickle.loads(bpickle.dumps(message)))
