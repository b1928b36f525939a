"""A server's varlink face: the name tables its varlink connections use
(:class:`.._core.server.varlink.VarlinkNames`), the framing they are read
with, and ``org.varlink.service`` (``GetInfo``, ``GetInterfaceDescription``),
answered from the server's methods. Built once when serving starts
(:func:`build_face`); engines see only what it puts in the frozen config
and the rules.

The library's own ``unixrpc.*`` methods are not served over varlink
(``GetInfo`` and ``GetInterfaceDescription`` are varlink's way of asking).
No event loop here: the handlers are plain functions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, Field

from .._core.server import Handler
from .._core.server.varlink import VarlinkNames
from .._core.server.wires import MessageFraming, check_shared
from .._core.varlink import SERVICE, is_interface_name
from ..exceptions import InternalError, RPCError
from ..methods import Method, method_spec
from ..protocol import StreamProtocol

if TYPE_CHECKING:
    from .server import Server

__all__ = [
    "DEFAULT_INTERFACE",
    "GetInfo",
    "GetInterfaceDescription",
    "InterfaceNotFound",
    "ServiceInfo",
    "VarlinkFace",
    "build_face",
    "interface_description",
    "interface_of",
]

logger = logging.getLogger("unixrpc.server")

#: the interface of a server whose name is no varlink interface name and that names none
DEFAULT_INTERFACE = "org.unixrpc.app"


class ServiceInfo(BaseModel):
    """What ``org.varlink.service.GetInfo`` answers."""

    vendor: str
    product: str
    version: str
    url: str
    interfaces: list[str]


class GetInfo(Method[ServiceInfo], name=f"{SERVICE}.GetInfo"):
    """Information about the service: vendor, product, version, url, and the interfaces it serves."""

    __rpc_reserved__: ClassVar[bool] = True


class InterfaceDescription(BaseModel):
    description: str


class InterfaceNotFound(RPCError, code=f"{SERVICE}.InterfaceNotFound"):
    """The interface is not served."""

    interface: str


class GetInterfaceDescription(
    Method[InterfaceDescription], name=f"{SERVICE}.GetInterfaceDescription", errors=[InterfaceNotFound]
):
    """The description of an interface, in varlink's IDL."""

    __rpc_reserved__: ClassVar[bool] = True
    interface: str = Field(description="the qualified interface name")


@dataclass(frozen=True, slots=True)
class VarlinkFace:
    """What serving varlink needs, built once (:func:`build_face`)."""

    names: VarlinkNames
    #: the server's handlers plus org.varlink.service's
    handlers: dict[str, Handler]
    #: NUL-ended messages, for the engines' transports
    protocol: StreamProtocol[Any, Any]


def interface_of(server: Server) -> str:
    """The varlink interface of *server*'s methods that have no qualified
    name: ``varlink_interface``, else its ``name`` if that is an interface
    name, else :data:`DEFAULT_INTERFACE`."""
    if server.varlink_interface is not None:
        return server.varlink_interface
    if server.name is not None and is_interface_name(server.name):
        return server.name
    return DEFAULT_INTERFACE


def interface_description(server: Server) -> str:
    """The varlink IDL of *server*'s interface (what ``GetInterfaceDescription``
    answers for it; ``unixrpc schema --varlink`` writes it).

    Raises:
        ValueError: its methods do not map to varlink names (names the two).
        VarlinkTypeError: a field has no varlink type (names it).
    """
    from ..varlink.idl import describe

    handlers = _served(server)
    interface = interface_of(server)
    VarlinkNames.build(handlers, interface)  # (refuses two methods with one varlink name)
    classes = [handler.spec.method_class for handler in handlers.values()]
    return describe(interface, classes, doc=server.description or "")


def _served(server: Server) -> dict[str, Handler]:
    return {
        key: handler
        for key, handler in server._handlers.items()
        if not getattr(handler.spec.method_class, "__rpc_reserved__", False)
    }


def build_face(server: Server, max_frame_size: int) -> VarlinkFace | None:
    """*server*'s varlink face, or None if its methods do not map (logged,
    and the server speaks unixrpc only). Sets whether listeners that speak
    both wires answer varlink (``rules.varlink_shared``): not with
    ``varlink=False`` (the face then serves only listeners that speak
    varlink alone: ``serve(varlink=...)``, an activated socket named
    ``varlink``), nor with frames of 2 GiB or more (:func:`check_shared`).

    Raises:
        ValueError: a ``varlink_interface`` was given and the names do not
            map into it.
    """
    rules = server._rules
    rules.varlink_shared = server.varlink
    if server.varlink:
        try:
            check_shared(max_frame_size)
        except ValueError as exc:
            logger.warning("not serving varlink on shared sockets: %s", exc)
            rules.varlink_shared = False
    handlers = _served(server)
    interface = interface_of(server)
    try:
        names = VarlinkNames.build(handlers, interface)
    except ValueError as exc:
        if server.varlink_interface is not None and server.varlink:
            raise
        if server.varlink:  # (varlink=False: said when a varlink listener needs it)
            logger.warning(
                "not serving varlink: %s (give the methods qualified names, or varlink=False)", exc
            )
        return None
    service = _service_handlers(server, names, handlers)
    table = dict(server._handlers)
    table.update(service)
    names.methods.update(VarlinkNames.build(service, SERVICE).methods)
    return VarlinkFace(names, table, StreamProtocol(MessageFraming(max_frame_size)))


def _service_handlers(
    server: Server, names: VarlinkNames, handlers: dict[str, Handler]
) -> dict[str, Handler]:
    """GetInfo and GetInterfaceDescription for *server* (the IDL made on
    first ask, and kept)."""
    from ..varlink.idl import describe  # (the IDL writer: only when asked)

    served = sorted(names.interfaces | {SERVICE})
    classes = [handler.spec.method_class for handler in handlers.values()]
    cache: dict[str, str] = {}

    def get_info(request: GetInfo) -> ServiceInfo:
        return ServiceInfo(
            vendor=server.varlink_vendor,
            product=server.name or "unixrpc server",
            version=server.version or "",
            url=server.varlink_url,
            interfaces=served,
        )

    def get_interface_description(request: GetInterfaceDescription) -> InterfaceDescription:
        name = request.interface
        if name not in served:
            raise InterfaceNotFound(interface=name)
        text = cache.get(name)
        if text is None:
            try:
                if name == SERVICE:
                    text = SERVICE_IDL
                else:
                    doc = (server.description or "") if name == names.interface else ""
                    text = describe(name, classes, doc=doc)
            except TypeError as exc:  # VarlinkTypeError: a field with no varlink type
                raise InternalError(f"interface {name} has no varlink description: {exc}") from None
            cache[name] = text
        return InterfaceDescription(description=text)

    info, description = method_spec(GetInfo), method_spec(GetInterfaceDescription)
    return {
        info.name: Handler(info, get_info, False, False),
        description.name: Handler(description, get_interface_description, False, False),
    }


#: org.varlink.service in varlink's IDL (what GetInterfaceDescription answers for it)
SERVICE_IDL = """\
# The interface every varlink service provides: what the service is, and
# the descriptions of the interfaces it serves.
interface org.varlink.service

# The service's vendor, product, version and url, and the interfaces it serves.
method GetInfo() -> (
  vendor: string,
  product: string,
  version: string,
  url: string,
  interfaces: []string
)

# The description of an interface the service serves.
method GetInterfaceDescription(interface: string) -> (description: string)

# No such interface is served.
error InterfaceNotFound (interface: string)

# No such method is served.
error MethodNotFound (method: string)

# The method is declared but not implemented.
error MethodNotImplemented (method: string)

# A parameter is missing or not valid.
error InvalidParameter (parameter: string)

# The caller may not call this method.
error PermissionDenied ()

# The method must be called with "more".
error ExpectedMore ()
"""
