"""Server reflection, v1 and v1alpha, with the contract's comments.

grpcio-reflection serves only ``grpc.reflection.v1alpha``, from the descriptors the generated
stubs carry (stripped of comments), and resolves neither a method (``Service.Method``) nor an
enum value (``Enum.VALUE``), the names grpcurl and buf ask for. This servicer answers both
reflection services (their messages are identical on the wire) from a pool that holds
store.proto with its source info (``descriptors.binpb``, written by scripts/gen-protos), so that
``grpcurl describe`` and ``buf curl`` show the proto's comments.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import suppress
from importlib import resources

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor

# Both reflection versions speak these messages: v1 only renamed the package.
from grpc_reflection.v1alpha import reflection_pb2 as pb

from improv_store.v1 import store_pb2

V1ALPHA = pb.DESCRIPTOR.services_by_name["ServerReflection"].full_name
V1 = "grpc.reflection.v1.ServerReflection"
SERVICE_NAMES = (V1, V1ALPHA)
# The FileDescriptorSet of proto/improv_store/v1/*.proto with source info, beside the stubs
# (importing them puts the contract into the default pool, which _files reads).
DESCRIPTOR_SET = "descriptors.binpb"
_CONTRACT_PACKAGE = store_pb2.__name__.rpartition(".")[0]

_V1_FILE = "grpc/reflection/v1/reflection.proto"
_V1ALPHA_SCOPE = "." + pb.DESCRIPTOR.package + "."
_V1_SCOPE = ".grpc.reflection.v1."
_METHOD = "ServerReflectionInfo"


def enable(server: grpc.Server, service_names: Iterable[str]) -> None:
    """Serve reflection v1 and v1alpha on ``server`` for ``service_names`` and for itself."""
    servicer = ReflectionServicer((*service_names, *SERVICE_NAMES))
    handlers = {
        _METHOD: grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=pb.ServerReflectionRequest.FromString,
            response_serializer=pb.ServerReflectionResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(name, handlers) for name in SERVICE_NAMES]
    )


class ReflectionServicer:
    """Answers ServerReflectionInfo streams about the listed services and their files."""

    def __init__(self, service_names: Iterable[str]) -> None:
        self._services = sorted(set(service_names))
        files = _files(self._services)
        self._serialized = {name: proto.SerializeToString() for name, proto in files.items()}
        self._pool = descriptor_pool.DescriptorPool()
        for proto in files.values():  # dependencies first
            self._pool.Add(proto)

    def ServerReflectionInfo(
        self, requests: Iterator[pb.ServerReflectionRequest], _context: grpc.ServicerContext
    ) -> Iterator[pb.ServerReflectionResponse]:
        """One response per request, in order."""
        for request in requests:
            yield self._answer(request)

    def _answer(self, request: pb.ServerReflectionRequest) -> pb.ServerReflectionResponse:
        kind = request.WhichOneof("message_request")
        try:
            if kind == "list_services":
                services = [pb.ServiceResponse(name=name) for name in self._services]
                return pb.ServerReflectionResponse(
                    original_request=request,
                    list_services_response=pb.ListServiceResponse(service=services),
                )
            if kind == "file_by_filename":
                return self._file_response(request, request.file_by_filename)
            if kind == "file_containing_symbol":
                return self._file_response(request, self._file_of(request.file_containing_symbol))
            if kind == "file_containing_extension":
                wanted = request.file_containing_extension
                message = self._pool.FindMessageTypeByName(wanted.containing_type)
                extension = self._pool.FindExtensionByNumber(message, wanted.extension_number)
                file = self._pool.FindFileContainingSymbol(extension.full_name)
                return self._file_response(request, file.name)
            if kind == "all_extension_numbers_of_type":
                message = self._pool.FindMessageTypeByName(request.all_extension_numbers_of_type)
                numbers = sorted(field.number for field in self._pool.FindAllExtensions(message))
                return pb.ServerReflectionResponse(
                    original_request=request,
                    all_extension_numbers_response=pb.ExtensionNumberResponse(
                        base_type_name=message.full_name, extension_number=numbers
                    ),
                )
        except KeyError as missing:
            return _error(request, grpc.StatusCode.NOT_FOUND, f"not found: {missing}")
        return _error(request, grpc.StatusCode.INVALID_ARGUMENT, "no request in the message")

    def _file_of(self, symbol: str) -> str:
        """The file that defines ``symbol``: a type, field, service, method or enum value.

        Clients name a method ``Service.Method`` and an enum value ``Enum.VALUE``; protobuf's
        pool knows the value by its own scoping (beside its enum) and the method not at all.
        """
        with suppress(KeyError):
            return self._pool.FindFileContainingSymbol(symbol).name
        parent, _, member = symbol.rpartition(".")
        with suppress(KeyError):
            service = self._pool.FindServiceByName(parent)
            if member in service.methods_by_name:
                return service.file.name
        with suppress(KeyError):
            enum = self._pool.FindEnumTypeByName(parent)
            if member in enum.values_by_name:
                return enum.file.name
        raise KeyError(symbol)

    def _file_response(
        self, request: pb.ServerReflectionRequest, name: str
    ) -> pb.ServerReflectionResponse:
        """The named file first, then every file it imports, directly or not."""
        names = [name]
        for each in names:  # grows as imports are found
            for dependency in self._pool.FindFileByName(each).dependencies:
                if dependency.name not in names:
                    names.append(dependency.name)
        return pb.ServerReflectionResponse(
            original_request=request,
            file_descriptor_response=pb.FileDescriptorResponse(
                file_descriptor_proto=[self._serialized[each] for each in names]
            ),
        )


def _error(
    request: pb.ServerReflectionRequest, code: grpc.StatusCode, message: str
) -> pb.ServerReflectionResponse:
    return pb.ServerReflectionResponse(
        original_request=request,
        error_response=pb.ErrorResponse(error_code=code.value[0], error_message=message),
    )


def _files(service_names: Iterable[str]) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """Every file the services are defined in and import, each after its imports.

    The stubs' descriptors, with the source info of descriptors.binpb for the contract's files;
    the v1 reflection file is v1alpha's, renamed (grpcio-reflection has no v1 stubs).
    """
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def add(file: FileDescriptor) -> None:
        if file.name not in files:
            for dependency in file.dependencies:
                add(dependency)
            files[file.name] = descriptor_pb2.FileDescriptorProto()
            file.CopyToProto(files[file.name])

    stubs = descriptor_pool.Default()
    for name in service_names:
        if name != V1:
            add(stubs.FindServiceByName(name).file)
    files[_V1_FILE] = _v1_file()

    annotated = descriptor_pb2.FileDescriptorSet.FromString(
        resources.files(_CONTRACT_PACKAGE).joinpath(DESCRIPTOR_SET).read_bytes()
    )
    for source in annotated.file:
        if source.name in files:
            files[source.name].source_code_info.CopyFrom(source.source_code_info)
    return files


def _v1_file() -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto: v1alpha's messages and service in the v1 package."""
    proto = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(proto)
    proto.name = _V1_FILE
    proto.package = _V1_SCOPE.strip(".")
    proto.options.Clear()  # upstream v1's options; v1alpha's say "deprecated"
    proto.options.java_multiple_files = True
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.java_outer_classname = "ServerReflectionProto"
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(_V1ALPHA_SCOPE, _V1_SCOPE)
    for method in proto.service[0].method:
        method.input_type = method.input_type.replace(_V1ALPHA_SCOPE, _V1_SCOPE)
        method.output_type = method.output_type.replace(_V1ALPHA_SCOPE, _V1_SCOPE)
    return proto
