#!/usr/bin/env python3
"""A grpcurl-style client built only on grpcio + grpcio-reflection: it learns the API from the
server's reflection service, as a user's script would, with no proto files.

  grpcurl.py ADDR list                      -> service names, one per line
  grpcurl.py ADDR describe SERVICE          -> method names
  grpcurl.py ADDR call SERVICE/METHOD JSON  -> the response as JSON, or on error
                                               {"error": CODE_NAME, "message": ...} (exit 3)
  grpcurl.py ADDR health [SERVICE]          -> grpc.health.v1 status
ADDR is host:port or unix:PATH. JSON may be @FILE to read it from a file. A server-streaming
call prints the list of responses; a client-streaming call takes a JSON list of requests.
"""
import json
import os
import sys

import grpc
from google.protobuf import descriptor_pool, json_format
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main():
    addr, verb = sys.argv[1], sys.argv[2]
    # Over a unix socket grpcio would send the socket path as :authority, which HTTP/2 servers
    # reject; name a plain host instead (grpcurl does the same).
    options = [("grpc.default_authority", "localhost")] if addr.startswith("unix:") else []
    # TLS when GRPCURL_CACERT names the CA that signed the server's certificate; a client
    # certificate too (mutual TLS) when GRPCURL_CERT and GRPCURL_KEY are set.
    ca = os.environ.get("GRPCURL_CACERT")
    if ca:
        def read(var):
            path = os.environ.get(var)
            return open(path, "rb").read() if path else None
        creds = grpc.ssl_channel_credentials(
            root_certificates=read("GRPCURL_CACERT"),
            private_key=read("GRPCURL_KEY"),
            certificate_chain=read("GRPCURL_CERT"),
        )
        channel = grpc.secure_channel(addr, creds, options=options)
    else:
        channel = grpc.insecure_channel(addr, options=options)
    db = ProtoReflectionDescriptorDatabase(channel)
    pool = descriptor_pool.DescriptorPool(db)
    if verb == "list":
        for s in db.get_services():
            print(s)
        return 0
    if verb == "describe":
        svc = pool.FindServiceByName(sys.argv[3])
        for m in svc.methods:
            print(m.name)
        return 0
    if verb == "health":
        req_cls = GetMessageClass(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest"))
        resp_cls = GetMessageClass(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse"))
        call = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=resp_cls.FromString,
        )
        req = req_cls(service=sys.argv[3] if len(sys.argv) > 3 else "")
        print(json_format.MessageToJson(call(req)))
        return 0
    if verb == "call":
        service_name, method_name = sys.argv[3].rsplit("/", 1)
        method = pool.FindServiceByName(service_name).FindMethodByName(method_name)
        req_cls = GetMessageClass(method.input_type)
        resp_cls = GetMessageClass(method.output_type)
        body = sys.argv[4] if len(sys.argv) > 4 else "{}"
        if body.startswith("@"):
            with open(body[1:]) as f:
                body = f.read()
        path = f"/{service_name}/{method_name}"
        if method.client_streaming:
            reqs = [json_format.ParseDict(m, req_cls()) for m in json.loads(body)]
        else:
            req = json_format.Parse(body, req_cls())
        try:
            if method.client_streaming:
                call = channel.stream_unary(path, request_serializer=lambda m: m.SerializeToString(),
                                            response_deserializer=resp_cls.FromString)
                out = json_format.MessageToDict(call(iter(reqs), timeout=120),
                                                preserving_proto_field_name=True,
                                                always_print_fields_with_no_presence=True)
            elif method.server_streaming:
                call = channel.unary_stream(path, request_serializer=lambda m: m.SerializeToString(),
                                            response_deserializer=resp_cls.FromString)
                out = [json_format.MessageToDict(r, preserving_proto_field_name=True) for r in call(req)]
            else:
                call = channel.unary_unary(path, request_serializer=lambda m: m.SerializeToString(),
                                           response_deserializer=resp_cls.FromString)
                out = json_format.MessageToDict(call(req, timeout=120), preserving_proto_field_name=True,
                                                always_print_fields_with_no_presence=True)
        except grpc.RpcError as e:
            print(json.dumps({"error": e.code().name, "message": e.details()}))
            return 3
        print(json.dumps(out))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
