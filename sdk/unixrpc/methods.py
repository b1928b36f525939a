"""The typed layer: methods are pydantic models parametrized by their result.

Owns :class:`Method` and :class:`StreamMethod`, their wire names and the
(cached) adapters that encode params and validate results and items. No I/O.

    class Add(Method[int]):                 # the parameter is the result type
        a: int
        b: int

    class Watch(StreamMethod[Event], name="events.Watch"):   # yields Events
        topic: str

    class GetUser(Method[User], name="users.Get", errors=(UserNotFound,), idempotent=True):
        uid: int                            # errors: the typed errors it may raise;
                                            # idempotent: safe to send again

Building a method object rejects unknown fields (a typo is caught where it
is made), but a server validating a request from the wire ignores params the
method does not declare (:attr:`MethodSpec.wire_extra`), so a newer client may
send a new optional param to an older daemon: docs/interfaces.md has the
evolution rules this follows.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, TypeAdapter

from .fds import schema_has_fds

__all__ = ["Method", "MethodSpec", "ResultCodec", "StreamMethod", "method_spec"]

_SCALARS = (int, str, float, bool, bytes, type(None))

# Covariant: a method whose result is a ``list[Device]`` is a method whose
# result is ``Sized`` (``len(client.call(ListDevices()))`` type-checks).
ResultT = TypeVar("ResultT", covariant=True)
ItemT = TypeVar("ItemT", covariant=True)


class ResultCodec(NamedTuple):
    """What encoding and validating a method's results (or items) takes,
    gathered in one place for the hot paths (see :meth:`MethodSpec.result_codec`)."""

    validator: Any  # pydantic-core SchemaValidator
    serializer: Any  # pydantic-core SchemaSerializer
    has_fds: bool
    trusted_type: type | None


class MethodSpec:
    """What the RPC layer needs to know about a method class, computed once."""

    __slots__ = (
        "_adapter",
        "_params_have_fds",
        "_result_has_fds",
        "_result_type",
        "_trusted_type",
        "codec",
        "errors",
        "idempotent",
        "method_class",
        "name",
        "name_json",
        "streaming",
        "wire_extra",
    )

    def __init__(
        self,
        method_class: type[BaseModel],
        name: str,
        streaming: bool,
        result_type: Any,
        errors: tuple[type[Any], ...] = (),
        idempotent: bool = False,
    ) -> None:
        self.method_class = method_class
        #: the method may run twice for one call with the same effect as once:
        #: a reconnecting client sends it again when its connection broke
        #: before the reply (docs/rpc.md, "When the daemon restarts")
        self.idempotent = idempotent
        #: the typed RPCError classes the method declares it may raise (for
        #: interface documents; a handler may still raise any RPCError)
        self.errors = errors
        #: the ``extra=`` a server validates requests with: ``"ignore"``
        #: (params the method does not declare are dropped: the evolution
        #: rule), or None when the class itself chose ``extra="allow"``
        self.wire_extra: Any = None if method_class.model_config.get("extra") == "allow" else "ignore"
        self.name = name
        self.name_json = orjson.dumps(name)
        self.streaming = streaming
        self._result_type = result_type
        self._adapter: TypeAdapter[Any] | None = None
        self._params_have_fds: bool | None = None
        self._result_has_fds: bool | None = None
        self._trusted_type: type | None = None
        #: :meth:`result_codec`'s answer once it has been asked (read this
        #: first on hot paths: an attribute costs less than a call)
        self.codec: ResultCodec | None = None

    def result_codec(self) -> ResultCodec:
        """The result validator, serializer, whether results hold FD fields,
        and the trusted type, built on first use.

        Raises:
            TypeError: the result type is a forward reference that does not resolve.
        """
        codec = self.codec
        if codec is None:
            adapter = self.result_adapter
            codec = self.codec = ResultCodec(
                adapter.validator, adapter.serializer, self.result_has_fds, self.trusted_type
            )
        return codec

    @property
    def params_have_fds(self) -> bool:
        """Whether the method's fields hold FD fields (then encoding its
        params collects descriptors). Known once the model is complete."""
        known = self._params_have_fds
        if known is None:
            if not self.method_class.__pydantic_complete__:
                return True  # forward references still unresolved: ask again later
            known = self._params_have_fds = schema_has_fds(self.method_class.__pydantic_core_schema__)
        return known

    @property
    def result_has_fds(self) -> bool:
        """Whether the result (or item) type holds FD fields."""
        known = self._result_has_fds
        if known is None:
            known = self._result_has_fds = schema_has_fds(self.result_adapter.core_schema)
        return known

    @property
    def result_adapter(self) -> TypeAdapter[Any]:
        """Validates results (or stream items); built on first use, so forward
        references (``Method["Later"]``) may name module-level classes defined
        after the method."""
        adapter = self._adapter
        if adapter is None:
            result_type = self._result_type
            if isinstance(result_type, str):
                namespace = vars(sys.modules[self.method_class.__module__])
                try:
                    result_type = eval(result_type, namespace)
                except NameError as exc:
                    owner = self.method_class.__qualname__
                    raise TypeError(f"cannot resolve result type {result_type!r} of {owner}: {exc}") from None
                self._result_type = result_type
            adapter = self._adapter = TypeAdapter(result_type)
            if result_type is None:
                result_type = type(None)
            if result_type in _SCALARS or (
                isinstance(result_type, type) and issubclass(result_type, BaseModel)
            ):
                self._trusted_type = result_type
        return adapter

    @property
    def result_type(self) -> Any:
        """The declared result (or item) type, as written (a forward
        reference stays a string until :attr:`result_adapter` resolves it)."""
        return self._result_type

    @property
    def result_type_name(self) -> str:
        """The result (or item) type as written in Python, for messages
        (``int``, ``User``, ``list[User]``).

        Raises:
            TypeError: the result type is a forward reference that does not resolve.
        """
        self.result_adapter  # noqa: B018 - resolves a forward reference
        result_type = self._result_type
        if isinstance(result_type, type) and not getattr(result_type, "__args__", None):
            return result_type.__name__
        return re.sub(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", str(result_type))

    @property
    def result_validator(self) -> Any:
        """The validator of results (or items): :attr:`result_adapter`'s
        (a pydantic-core ``SchemaValidator``)."""
        return self.result_adapter.validator

    @property
    def trusted_type(self) -> type | None:
        """The result type when it is a plain class (a scalar or a pydantic
        model), else None. A value of exactly this class needs no type check
        when it is encoded: it cannot mismatch (a model was checked when it
        was built)."""
        self.result_adapter  # noqa: B018 - resolves the type
        return self._trusted_type

    def __repr__(self) -> str:
        kind = "stream" if self.streaming else "method"
        return f"<{kind} {self.name!r} of {self.method_class.__qualname__}>"


def _find_result_type(cls: type, origins: tuple[type, ...]) -> Any:
    for klass in cls.__mro__:
        metadata = getattr(klass, "__pydantic_generic_metadata__", None)
        if metadata and metadata["origin"] in origins and metadata["args"]:
            return metadata["args"][0]
    return Any


class _MethodBase(BaseModel):
    """Shared machinery of Method and StreamMethod."""

    model_config = ConfigDict(extra="forbid")

    __rpc_spec__: ClassVar[MethodSpec]
    __rpc_name__: ClassVar[str | None] = None
    __rpc_errors__: ClassVar[tuple[type[Any], ...]] = ()
    __rpc_idempotent__: ClassVar[bool] = False

    def __init_subclass__(
        cls,
        *,
        name: str | None = None,
        errors: Iterable[type[Any]] | None = None,
        idempotent: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        # An explicit name applies to this class only, not to its subclasses;
        # declared errors and idempotence are inherited unless given again.
        cls.__rpc_name__ = name
        if idempotent is not None:
            if not isinstance(idempotent, bool):
                raise TypeError(f"idempotent= takes True or False, got {idempotent!r}")
            cls.__rpc_idempotent__ = idempotent
        if errors is not None:
            from .exceptions import RPCError

            declared = tuple(errors)
            for error in declared:
                if not (isinstance(error, type) and issubclass(error, RPCError)):
                    raise TypeError(f"errors= takes RPCError subclasses, got {error!r}")
            cls.__rpc_errors__ = declared

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        metadata = cls.__pydantic_generic_metadata__
        for base in cls.__bases__ if metadata["origin"] is None else ():
            if base.__module__ == __name__ and base.__qualname__ in ("Method", "StreamMethod"):
                kind, name = base.__qualname__, cls.__name__
                if kind == "Method":
                    hint = f"write class {name}(Method[int]) (Method[None] for no result)"
                else:
                    hint = f"write class {name}(StreamMethod[str]) with the type of its items"
                raise TypeError(f"class {name}({kind}) needs its result type: {hint}")
        if metadata["origin"] is not None or metadata["parameters"]:
            return  # ``Method[int]`` itself, or a still-generic subclass: not a method
        streaming = issubclass(cls, StreamMethod)
        origins: tuple[type, ...] = (StreamMethod,) if streaming else (Method,)
        name = cls.__dict__.get("__rpc_name__") or cls.__name__
        if not isinstance(name, str) or not name:
            raise TypeError(f"method name must be a non-empty string, got {name!r}")
        result_type = _find_result_type(cls, origins)
        cls.__rpc_spec__ = MethodSpec(
            cls, name, streaming, result_type, cls.__rpc_errors__, cls.__rpc_idempotent__
        )


class Method(_MethodBase, Generic[ResultT]):
    """Base class of an RPC method: its fields are the params, its type
    parameter the result type. The wire name is the class name unless given:
    ``class GetUser(Method[User], name="users.Get")``.

    Class keywords:
        name: the wire name (default: the class name).
        errors: the typed :class:`~unixrpc.RPCError` classes the method may
            raise; they appear in its interface document (``unixrpc describe``).
        idempotent: ``True`` when running the call twice has the effect of
            running it once (a read, a set-to-value): a client with
            ``reconnect=`` on sends it again after its connection broke
            before the reply. Shown in the interface document.

    Building an instance with a field the class does not declare raises
    (``extra="forbid"``), but a server ignores params it does not know in a
    request from the wire, so clients may add optional params before
    daemons know them (docs/interfaces.md). With ``model_config =
    ConfigDict(extra="allow")`` the server keeps them instead.

    Raises:
        TypeError: (at class creation) an empty name, ``errors`` that are
            not RPCError subclasses, ``idempotent`` that is not a bool, or
            a subclass of ``Method`` itself with no type parameter (write
            ``Method[int]``; ``Method[None]`` for a method that returns
            nothing).
    """


class StreamMethod(_MethodBase, Generic[ItemT]):
    """Base class of a streaming method: the server yields items of the type
    parameter; the client iterates over them with ``client.stream(...)``.
    Takes the same class keywords (``name``, ``errors``, ``idempotent``) as
    :class:`Method` (an idempotent stream is one a reconnecting client may
    open again with the same request; see ``resume=`` of ``Client.stream``).

    Raises:
        TypeError: (at class creation) as for :class:`Method`; a subclass of
            ``StreamMethod`` itself needs its item type (``StreamMethod[str]``).
    """


def method_spec(method_class: type[BaseModel]) -> MethodSpec:
    """The spec of a concrete method class.

    Raises:
        TypeError: *method_class* is not a concrete Method/StreamMethod subclass.
    """
    spec = method_class.__dict__.get("__rpc_spec__") if isinstance(method_class, type) else None
    if spec is None:
        if isinstance(method_class, type) and issubclass(method_class, _MethodBase):
            parameters = method_class.__pydantic_generic_metadata__["parameters"]
            if parameters:
                names = ", ".join(str(p).lstrip("+-~") for p in parameters)
                raise TypeError(
                    f"{method_class.__name__} is still generic (in {names}): serve or call a "
                    f"subclass that names its result type, e.g. class Get({method_class.__name__}[int])"
                )
        elif isinstance(method_class, BaseModel):
            name = type(method_class).__name__
            raise TypeError(f"expected a method class, got an instance of {name}: pass {name} itself")
        raise TypeError(f"expected a concrete Method or StreamMethod subclass, got {method_class!r}")
    return spec  # type: ignore[no-any-return]
