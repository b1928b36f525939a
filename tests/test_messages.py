"""_core/messages.py: the wording of the server's error replies, as pure
functions (strings in, a string out)."""

from __future__ import annotations

from pydantic import BaseModel, ValidationError

from unixrpc._core import messages


class Params(BaseModel):
    a: int
    b: int
    tags: list[str] = []


def errors_of(data: object) -> list[dict[str, object]]:
    try:
        Params.model_validate(data)
    except ValidationError as exc:
        return exc.errors(include_url=False, include_context=False)  # type: ignore[return-value]
    raise AssertionError("valid")


def test_invalid_params_names_each_field_and_what_was_wrong() -> None:
    text = messages.invalid_params("Add", errors_of({"b": "two", "tags": ["x", 3]}))
    assert text == (
        "invalid params for Add: a: required, not given; "
        "b: input should be a valid integer, unable to parse string as an integer (got 'two'); "
        "tags[1]: input should be a valid string (got 3)"
    )


def test_invalid_params_cuts_long_inputs_and_counts_the_rest() -> None:
    errors = [
        {
            "type": "int_type",
            "loc": ("items", i, "n"),
            "msg": "Input should be a valid integer",
            "input": "x" * 100,
        }
        for i in range(8)
    ]
    text = messages.invalid_params("Bulk", errors)
    assert text.count("items[") == messages.MAX_SHOWN_ERRORS
    assert text.endswith("; and 3 more (see the error's data)")
    assert "'xxxxxxxx" in text
    assert "x" * 60 not in text


def test_invalid_params_value_errors_and_whole_params() -> None:
    value_error = {
        "type": "value_error",
        "loc": ("fd",),
        "msg": "Value error, fd index 2 out of range",
        "input": 2,
    }
    assert (
        messages.invalid_params("Take", [value_error])
        == "invalid params for Take: fd: fd index 2 out of range (got 2)"
    )
    not_an_object = {"type": "model_type", "loc": (), "msg": "Input should be an object", "input": [1]}
    assert (
        messages.invalid_params("Add", [not_an_object])
        == "invalid params for Add: params: input should be an object"
    )
    assert messages.invalid_params("Add", []) == "invalid params for Add"


def test_method_not_found_suggests_the_nearest_names() -> None:
    served = ["Add", "users.Get", "users.List", "unixrpc.Describe", "unixrpc.Ping"]
    assert messages.method_not_found("user.Get", served) == (
        "no method named 'user.Get'; did you mean 'users.Get'? "
        "(`unixrpc describe SOCKET` lists the 3 methods served)"
    )
    assert messages.method_not_found("add", served).startswith("no method named 'add'; did you mean 'Add'?")
    # the same last component in another namespace
    assert "did you mean 'users.Get'" in messages.method_not_found("Get", served)
    # nothing close: no suggestion, still the way to list them
    assert messages.method_not_found("Frobnicate", served) == (
        "no method named 'Frobnicate' (`unixrpc describe SOCKET` lists the 3 methods served)"
    )


def test_method_not_found_keeps_reserved_names_to_their_namespace() -> None:
    served = ["Describe", "unixrpc.Describe"]
    assert "'unixrpc.Describe'" not in messages.method_not_found("Describ", served)
    assert "did you mean 'unixrpc.Describe'" in messages.method_not_found("unixrpc.Describ", served)
    assert messages.method_not_found("x", ["One"]).endswith("lists the 1 method served)")


def test_method_not_found_cuts_huge_names() -> None:
    text = messages.method_not_found("n" * 5000, [])
    assert len(text) < 250
    assert text.startswith("no method named '" + "n" * 100 + "'...")


def test_authorize_failed_blames_the_hook() -> None:
    text = messages.authorize_failed("privsep.Open", KeyError("uid"))
    assert text == (
        "the server's authorize hook raised KeyError while checking a call of privsep.Open; "
        "the handler did not run (the hook should return True or False)"
    )


def test_messages_module_does_no_io() -> None:
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(messages))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not imported & {"socket", "anyio", "trio", "asyncio", "threading", "os"}
