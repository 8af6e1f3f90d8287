#!/usr/bin/env python3
"""A port of csi-sanity's cases (kubernetes-csi/csi-test, pkg/sanity) to Python grpcio, plus the
Kubernetes sidecars' call sequences and bad input, against a live multisnap-csi.

usage: sanity.py CSI_SOCKET AGENT_SOCKET NODE_NAME

The CSI and agent protos are compiled here with grpcio-tools (proto/csi/v1/csi.proto,
proto/multisnap/v1/multisnap.proto). Each case skips, saying why, when the driver does not
advertise its capability, or when it needs what this machine lacks (a kernel block device; the
agent's clone support, judged by the agent answering UNIMPLEMENTED). Prints one line per case,
then `SUMMARY ran=N passed=P failed=F skipped=S`; exits 1 if any case failed.
"""

import os
import random
import string
import subprocess
import sys
import tempfile
import time
import traceback

import grpc

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GIB = 1 << 30
MIB = 1 << 20
# csi-sanity's default test volume is 10 GiB; the agent's files are sparse, so it costs nothing.
TEST_VOLUME_SIZE = 10 * GIB
TOPOLOGY_KEY = "topology.csi.multisnap.dev/node"
IDEMPOTENT_COUNT = 10
NO_CLONES = "agent has no clone support (it answers UNIMPLEMENTED to CreateVolumeRequest.source)"


def compile_protos():
    from grpc_tools import protoc
    import importlib.resources

    out = tempfile.mkdtemp(prefix="csi-py-")
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    for proto in ["csi/v1/csi.proto", "multisnap/v1/multisnap.proto"]:
        rc = protoc.main(
            [
                "protoc",
                "-I" + os.path.join(ROOT, "proto"),
                "-I" + well_known,
                "--python_out=" + out,
                "--grpc_python_out=" + out,
                proto,
            ]
        )
        if rc != 0:
            sys.exit("protoc failed on %s" % proto)
    sys.path.insert(0, out)


compile_protos()
from csi.v1 import csi_pb2 as csi  # noqa: E402
from csi.v1 import csi_pb2_grpc as csi_grpc  # noqa: E402
from multisnap.v1 import multisnap_pb2 as ms  # noqa: E402
from multisnap.v1 import multisnap_pb2_grpc as ms_grpc  # noqa: E402


class Skip(Exception):
    pass


class Failed(Exception):
    pass


def unique(prefix):
    return prefix + "-" + "".join(random.choice(string.hexdigits.lower()) for _ in range(16))


def channel(path):
    # grpcio would send the socket path as :authority over a unix socket; servers want a host.
    return grpc.insecure_channel("unix:" + path, options=[("grpc.default_authority", "localhost")])


def expect_code(code, fn, *args, **kwargs):
    try:
        reply = fn(*args, **kwargs)
    except grpc.RpcError as e:
        if e.code() != code:
            raise Failed("expected %s, got %s: %s" % (code.name, e.code().name, e.details()))
        if not e.details():
            raise Failed("%s without a message" % code.name)
        return e.details()
    raise Failed("expected %s, got OK: %s" % (code.name, reply))


def check(cond, what):
    if not cond:
        raise Failed(what)


class Sanity:
    def __init__(self, csi_socket, agent_socket, node):
        self.node = node
        ch = channel(csi_socket)
        self.identity = csi_grpc.IdentityStub(ch)
        self.ctrl = csi_grpc.ControllerStub(ch)
        self.nodesvc = csi_grpc.NodeStub(ch)
        self.group = csi_grpc.GroupControllerStub(ch)
        ach = channel(agent_socket)
        self.agent_volumes = ms_grpc.VolumeServiceStub(ach)
        self.results = []  # (name, status, reason)
        self.cleanup = []
        caps = self.ctrl.ControllerGetCapabilities(csi.ControllerGetCapabilitiesRequest())
        self.ctrl_caps = {c.rpc.type for c in caps.capabilities}
        ncaps = self.nodesvc.NodeGetCapabilities(csi.NodeGetCapabilitiesRequest())
        self.node_caps = {c.rpc.type for c in ncaps.capabilities}
        pcaps = self.identity.GetPluginCapabilities(csi.GetPluginCapabilitiesRequest())
        self.plugin_caps = {c.service.type for c in pcaps.capabilities if c.HasField("service")}
        self.group_caps = set()
        if csi.PluginCapability.Service.GROUP_CONTROLLER_SERVICE in self.plugin_caps:
            gcaps = self.group.GroupControllerGetCapabilities(csi.GroupControllerGetCapabilitiesRequest())
            self.group_caps = {c.rpc.type for c in gcaps.capabilities}
        self.kernel_device = os.path.exists("/dev/ublk-control") or os.path.exists("/sys/block/nbd0")

    # ---- helpers ----

    def need(self, cap):
        if cap not in self.ctrl_caps:
            raise Skip("capability %s not advertised" % csi.ControllerServiceCapability.RPC.Type.Name(cap))

    def need_group(self):
        if csi.PluginCapability.Service.GROUP_CONTROLLER_SERVICE not in self.plugin_caps:
            raise Skip("plugin capability GROUP_CONTROLLER_SERVICE not advertised")
        cap = csi.GroupControllerServiceCapability.RPC.CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT
        if cap not in self.group_caps:
            raise Skip("group capability CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT not advertised")

    def create_group(self, volume_ids, name=None):
        name = name or unique("sanity-group")
        g = self.group.CreateVolumeGroupSnapshot(
            csi.CreateVolumeGroupSnapshotRequest(name=name, source_volume_ids=volume_ids)).group_snapshot
        self.cleanup.append(("group", g.group_snapshot_id))
        return g

    def need_kernel(self):
        if not self.kernel_device:
            raise Skip("this kernel has neither ublk (/dev/ublk-control) nor nbd (/sys/block/nbd0)")

    def mount_cap(self, fs=""):
        return csi.VolumeCapability(
            mount=csi.VolumeCapability.MountVolume(fs_type=fs),
            access_mode=csi.VolumeCapability.AccessMode(mode=csi.VolumeCapability.AccessMode.SINGLE_NODE_WRITER),
        )

    def block_cap(self):
        return csi.VolumeCapability(
            block=csi.VolumeCapability.BlockVolume(),
            access_mode=csi.VolumeCapability.AccessMode(mode=csi.VolumeCapability.AccessMode.SINGLE_NODE_WRITER),
        )

    def create_req(self, name, size=TEST_VOLUME_SIZE, limit=0, **kw):
        return csi.CreateVolumeRequest(
            name=name,
            capacity_range=csi.CapacityRange(required_bytes=size, limit_bytes=limit),
            volume_capabilities=[kw.pop("cap", None) or self.mount_cap()],
            **kw
        )

    def create_volume(self, name=None, size=TEST_VOLUME_SIZE, **kw):
        name = name or unique("sanity-vol")
        vol = self.ctrl.CreateVolume(self.create_req(name, size, **kw)).volume
        self.cleanup.append(("volume", vol.volume_id))
        return vol

    def create_snapshot(self, volume_id, name=None):
        name = name or unique("sanity-snap")
        snap = self.ctrl.CreateSnapshot(csi.CreateSnapshotRequest(source_volume_id=volume_id, name=name)).snapshot
        self.cleanup.append(("snapshot", snap.snapshot_id))
        return snap

    def restore(self, name, source, size=TEST_VOLUME_SIZE, limit=0):
        """CreateVolume from a content source; Skip when the agent has no clone support."""
        req = self.create_req(name, size, limit=limit, volume_content_source=source)
        try:
            vol = self.ctrl.CreateVolume(req).volume
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                print("  (%s)" % e.details())
                raise Skip(NO_CLONES)
            raise
        self.cleanup.append(("volume", vol.volume_id))
        return vol

    def agent_volume_names(self):
        return {v.name for v in self.agent_volumes.ListVolumes(ms.ListVolumesRequest()).volumes}

    def run_cleanup(self):
        # LIFO, as csi-sanity's Cleanup: snapshots before the volumes they came from.
        while self.cleanup:
            kind, ident = self.cleanup.pop()
            if kind == "volume":
                self.ctrl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=ident))
            elif kind == "group":
                self.group.DeleteVolumeGroupSnapshot(csi.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=ident))
            else:
                self.ctrl.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=ident))

    def run(self, name, fn):
        try:
            fn()
            status, reason = "PASS", ""
        except Skip as s:
            status, reason = "SKIP", str(s)
        except Failed as f:
            status, reason = "FAIL", str(f)
        except grpc.RpcError as e:
            status, reason = "FAIL", "unexpected %s: %s" % (e.code().name, e.details())
        except Exception:  # a bug in the case itself must fail too, loudly
            status, reason = "FAIL", traceback.format_exc()
        try:
            self.run_cleanup()
        except grpc.RpcError as e:
            if status != "FAIL":
                status, reason = "FAIL", "cleanup: %s: %s" % (e.code().name, e.details())
        self.results.append((name, status, reason))
        print("%s %s%s" % (status, name, (": " + reason) if reason else ""), flush=True)


# ---------------------------------------------------------------------------------------------
# Identity

def identity_cases(s):
    def plugin_capabilities():
        caps = s.identity.GetPluginCapabilities(csi.GetPluginCapabilitiesRequest()).capabilities
        known_service = set(csi.PluginCapability.Service.Type.values()) - {0}
        known_expansion = set(csi.PluginCapability.VolumeExpansion.Type.values()) - {0}
        for c in caps:
            if c.HasField("service"):
                check(c.service.type in known_service, "unknown service type %s" % c.service.type)
            else:
                check(c.volume_expansion.type in known_expansion, "unknown expansion %s" % c)
        check(csi.PluginCapability.Service.CONTROLLER_SERVICE in s.plugin_caps, "no CONTROLLER_SERVICE")
        check(csi.PluginCapability.Service.VOLUME_ACCESSIBILITY_CONSTRAINTS in s.plugin_caps,
              "no VOLUME_ACCESSIBILITY_CONSTRAINTS (per-node provisioning needs it)")

    def probe():
        r = s.identity.Probe(csi.ProbeRequest())
        check(not r.HasField("ready") or r.ready.value, "not ready with a live agent: %s" % r)

    def plugin_info():
        import re
        r = s.identity.GetPluginInfo(csi.GetPluginInfoRequest())
        check(re.match(r"^[a-zA-Z][A-Za-z0-9-\.\_]{0,61}[a-zA-Z]$", r.name), "bad name %r" % r.name)
        check(r.name == "csi.multisnap.dev", "name %r" % r.name)
        check(r.vendor_version, "no vendor_version")

    s.run("Identity GetPluginCapabilities: known types only", plugin_capabilities)
    s.run("Identity Probe: ready", probe)
    s.run("Identity GetPluginInfo: valid name and version", plugin_info)


# ---------------------------------------------------------------------------------------------
# Controller, volumes

def controller_volume_cases(s):
    T = csi.ControllerServiceCapability.RPC
    IA = grpc.StatusCode.INVALID_ARGUMENT

    def capabilities():
        known = set(T.Type.values()) - {0}
        for t in s.ctrl_caps:
            check(t in known, "unknown capability %s" % t)
        check(T.PUBLISH_UNPUBLISH_VOLUME not in s.ctrl_caps, "a node-local driver must not need attach")

    def get_capacity():
        s.need(T.GET_CAPACITY)
        s.ctrl.GetCapacity(csi.GetCapacityRequest())

    def list_volumes_ids():
        s.need(T.LIST_VOLUMES)
        s.create_volume()
        for e in s.ctrl.ListVolumes(csi.ListVolumesRequest()).entries:
            check(e.volume.volume_id, "entry without volume_id")

    def list_volumes_bad_token():
        s.need(T.LIST_VOLUMES)
        expect_code(grpc.StatusCode.ABORTED, s.ctrl.ListVolumes, csi.ListVolumesRequest(starting_token="invalid-token"))

    def list_volumes_count():
        s.need(T.LIST_VOLUMES)
        before = len(s.ctrl.ListVolumes(csi.ListVolumesRequest()).entries)
        vol = s.create_volume()
        check(len(s.ctrl.ListVolumes(csi.ListVolumesRequest()).entries) == before + 1, "count did not grow by 1")
        s.ctrl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))
        s.cleanup.pop()
        check(len(s.ctrl.ListVolumes(csi.ListVolumesRequest()).entries) == before, "count did not return")

    def list_volumes_pages():
        s.need(T.LIST_VOLUMES)
        for _ in range(3):
            s.create_volume(size=MIB)
        total = len(s.ctrl.ListVolumes(csi.ListVolumesRequest()).entries)
        first = s.ctrl.ListVolumes(csi.ListVolumesRequest(max_entries=2))
        check(len(first.entries) == 2 and first.next_token, "page 1: %d entries, token %r" % (len(first.entries), first.next_token))
        rest = s.ctrl.ListVolumes(csi.ListVolumesRequest(starting_token=first.next_token))
        check(len(rest.entries) == total - 2 and not rest.next_token, "rest: %d of %d" % (len(rest.entries), total))
        ids = [e.volume.volume_id for e in first.entries] + [e.volume.volume_id for e in rest.entries]
        check(len(set(ids)) == total, "pages overlap")

    def create_no_name():
        s.need(T.CREATE_DELETE_VOLUME)
        expect_code(IA, s.ctrl.CreateVolume, s.create_req(""))

    def create_no_caps():
        s.need(T.CREATE_DELETE_VOLUME)
        req = s.create_req(unique("nocaps"))
        del req.volume_capabilities[:]
        expect_code(IA, s.ctrl.CreateVolume, req)

    def create_normal():
        s.need(T.CREATE_DELETE_VOLUME)
        vol = s.create_volume()
        check(vol.volume_id, "no volume_id")
        check(vol.capacity_bytes >= TEST_VOLUME_SIZE, "capacity %d" % vol.capacity_bytes)
        check(len(vol.accessible_topology) == 1 and vol.accessible_topology[0].segments[TOPOLOGY_KEY] == s.node,
              "topology %s" % vol.accessible_topology)

    def create_capacity():
        s.need(T.CREATE_DELETE_VOLUME)
        vol = s.create_volume(size=GIB)
        check(vol.capacity_bytes == 0 or vol.capacity_bytes >= GIB, "capacity %d" % vol.capacity_bytes)

    def create_idempotent():
        s.need(T.CREATE_DELETE_VOLUME)
        name = unique("idem")
        a = s.create_volume(name, size=GIB)
        for _ in range(IDEMPOTENT_COUNT):
            b = s.ctrl.CreateVolume(s.create_req(name, GIB)).volume
            check(a.volume_id == b.volume_id and a.capacity_bytes == b.capacity_bytes, "%s != %s" % (a, b))

    def create_same_name_other_size():
        s.need(T.CREATE_DELETE_VOLUME)
        name = unique("conflict")
        s.create_volume(name, size=GIB, limit=GIB)
        expect_code(grpc.StatusCode.ALREADY_EXISTS, s.ctrl.CreateVolume, s.create_req(name, 2 * GIB, limit=2 * GIB))

    def agent_labels(volume_id):
        agent_name = volume_id.split("/", 1)[1]
        return dict(s.agent_volumes.GetVolume(ms.GetVolumeRequest(name=agent_name)).labels)

    def create_same_name_other_fs_type():
        s.need(T.CREATE_DELETE_VOLUME)
        name = unique("fstype")
        a = s.create_volume(name, size=MIB, cap=s.mount_cap("ext4"))
        labels = agent_labels(a.volume_id)
        check(labels.get("csi.multisnap.dev/fs-type") == "ext4", "agent labels %s" % labels)
        b = s.ctrl.CreateVolume(s.create_req(name, MIB, cap=s.mount_cap("ext4"))).volume
        check(a.volume_id == b.volume_id, "not idempotent with the same fsType")
        expect_code(grpc.StatusCode.ALREADY_EXISTS, s.ctrl.CreateVolume, s.create_req(name, MIB, cap=s.mount_cap("xfs")))
        expect_code(grpc.StatusCode.ALREADY_EXISTS, s.ctrl.CreateVolume, s.create_req(name, MIB, cap=s.block_cap()))

    def create_same_name_other_source():
        s.need(T.CREATE_DELETE_VOLUME)
        s.need(T.CREATE_DELETE_SNAPSHOT)
        src = s.create_volume(size=MIB)
        one, two = (s.create_snapshot(src.volume_id) for _ in range(2))
        source_of = lambda snap: csi.VolumeContentSource(
            snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id))
        name = unique("restored")
        a = s.restore(name, source_of(one), size=MIB)
        b = s.ctrl.CreateVolume(s.create_req(name, MIB, volume_content_source=source_of(one))).volume
        check(a.volume_id == b.volume_id, "not idempotent with the same source")
        expect_code(grpc.StatusCode.ALREADY_EXISTS, s.ctrl.CreateVolume,
                    s.create_req(name, MIB, volume_content_source=source_of(two)))
        expect_code(grpc.StatusCode.ALREADY_EXISTS, s.ctrl.CreateVolume, s.create_req(name, MIB))
        clone = csi.VolumeContentSource(volume=csi.VolumeContentSource.VolumeSource(volume_id=src.volume_id))
        expect_code(grpc.StatusCode.ALREADY_EXISTS, s.ctrl.CreateVolume,
                    s.create_req(name, MIB, volume_content_source=clone))
        # And a volume made empty is not the same as one restored under its name.
        empty = unique("empty")
        s.create_volume(empty, size=MIB)
        expect_code(grpc.StatusCode.ALREADY_EXISTS, s.ctrl.CreateVolume,
                    s.create_req(empty, MIB, volume_content_source=source_of(one)))

    def create_max_name():
        s.need(T.CREATE_DELETE_VOLUME)
        name = "v" * 128
        a = s.create_volume(name, size=MIB)
        b = s.ctrl.CreateVolume(s.create_req(name, MIB)).volume
        check(a.volume_id == b.volume_id, "not idempotent with a 128-byte name")

    def create_from_snapshot():
        s.need(T.CREATE_DELETE_VOLUME)
        s.need(T.CREATE_DELETE_SNAPSHOT)
        src = s.create_volume(size=MIB)
        name = unique("snap")
        snap = s.create_snapshot(src.volume_id, name)
        for _ in range(30):  # csi-sanity re-issues the same CreateSnapshot until ready_to_use
            if snap.ready_to_use:
                break
            time.sleep(1)
            snap = s.ctrl.CreateSnapshot(csi.CreateSnapshotRequest(source_volume_id=src.volume_id, name=name)).snapshot
        check(snap.ready_to_use, "snapshot never ready")
        source = csi.VolumeContentSource(snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id))
        vol = s.restore(unique("restored"), source, size=MIB)
        check(vol.HasField("content_source") and vol.content_source.snapshot.snapshot_id == snap.snapshot_id,
              "content_source not echoed: %s" % vol)

    def create_from_missing_snapshot():
        s.need(T.CREATE_DELETE_VOLUME)
        s.need(T.CREATE_DELETE_SNAPSHOT)
        source = csi.VolumeContentSource(snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id="non-existing-snapshot-id"))
        expect_code(grpc.StatusCode.NOT_FOUND, s.ctrl.CreateVolume, s.create_req(unique("x"), volume_content_source=source))
        # A well-formed id of this node that names nothing is not found either.
        src = s.create_volume(size=MIB)
        missing = src.volume_id + "@csi-" + "0" * 24
        source = csi.VolumeContentSource(snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=missing))
        expect_code(grpc.StatusCode.NOT_FOUND, s.ctrl.CreateVolume, s.create_req(unique("x"), volume_content_source=source))

    def create_from_volume():
        s.need(T.CLONE_VOLUME)
        src = s.create_volume(size=MIB)
        source = csi.VolumeContentSource(volume=csi.VolumeContentSource.VolumeSource(volume_id=src.volume_id))
        vol = s.restore(unique("clone"), source, size=MIB)
        check(vol.content_source.volume.volume_id == src.volume_id, "content_source not echoed: %s" % vol)

    def create_from_missing_volume():
        s.need(T.CLONE_VOLUME)
        source = csi.VolumeContentSource(volume=csi.VolumeContentSource.VolumeSource(volume_id="non-existing-volume-id"))
        expect_code(grpc.StatusCode.NOT_FOUND, s.ctrl.CreateVolume, s.create_req(unique("x"), volume_content_source=source))

    def delete_no_id():
        s.need(T.CREATE_DELETE_VOLUME)
        expect_code(IA, s.ctrl.DeleteVolume, csi.DeleteVolumeRequest())

    def delete_invalid_id():
        s.need(T.CREATE_DELETE_VOLUME)
        s.ctrl.DeleteVolume(csi.DeleteVolumeRequest(volume_id="reallyfakevolumeid"))
        s.ctrl.DeleteVolume(csi.DeleteVolumeRequest(volume_id="%s/csi-%s" % (s.node, "0" * 24)))

    def delete_created():
        s.need(T.CREATE_DELETE_VOLUME)
        before = s.agent_volume_names()
        vol = s.create_volume()
        s.cleanup.pop()
        for _ in range(2):
            s.ctrl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))
        check(s.agent_volume_names() == before, "the agent still holds the volume")

    def validate_no_id():
        expect_code(IA, s.ctrl.ValidateVolumeCapabilities,
                    csi.ValidateVolumeCapabilitiesRequest(volume_capabilities=[s.mount_cap()]))

    def validate_no_caps():
        vol = s.create_volume(size=MIB)
        expect_code(IA, s.ctrl.ValidateVolumeCapabilities, csi.ValidateVolumeCapabilitiesRequest(volume_id=vol.volume_id))

    def validate_ok():
        vol = s.create_volume(size=MIB)
        for cap in [s.mount_cap(), s.block_cap(), s.mount_cap("xfs")]:
            r = s.ctrl.ValidateVolumeCapabilities(
                csi.ValidateVolumeCapabilitiesRequest(volume_id=vol.volume_id, volume_capabilities=[cap]))
            check(r.HasField("confirmed") and len(r.confirmed.volume_capabilities) > 0, "not confirmed: %s" % r)

    def validate_unsupported():
        vol = s.create_volume(size=MIB)
        cap = csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume(),
                                   access_mode=csi.VolumeCapability.AccessMode(mode=csi.VolumeCapability.AccessMode.MULTI_NODE_MULTI_WRITER))
        r = s.ctrl.ValidateVolumeCapabilities(csi.ValidateVolumeCapabilitiesRequest(volume_id=vol.volume_id, volume_capabilities=[cap]))
        check(not r.HasField("confirmed") and "MULTI_NODE_MULTI_WRITER" in r.message, "confirmed a multi-node mode: %s" % r)

    def validate_unknown():
        expect_code(grpc.StatusCode.NOT_FOUND, s.ctrl.ValidateVolumeCapabilities,
                    csi.ValidateVolumeCapabilitiesRequest(volume_id="fake-vol-id-0123456789", volume_capabilities=[s.mount_cap()]))

    def expand_no_id():
        s.need(T.EXPAND_VOLUME)
        expect_code(IA, s.ctrl.ControllerExpandVolume,
                    csi.ControllerExpandVolumeRequest(capacity_range=csi.CapacityRange(required_bytes=GIB)))

    def expand_no_capacity():
        s.need(T.EXPAND_VOLUME)
        vol = s.create_volume(size=MIB)
        expect_code(IA, s.ctrl.ControllerExpandVolume, csi.ControllerExpandVolumeRequest(volume_id=vol.volume_id))

    def expand_ok():
        s.need(T.EXPAND_VOLUME)
        vol = s.create_volume(size=GIB)
        want = vol.capacity_bytes + GIB
        for _ in range(2):  # the second is a repeat: same answer
            r = s.ctrl.ControllerExpandVolume(csi.ControllerExpandVolumeRequest(
                volume_id=vol.volume_id, capacity_range=csi.CapacityRange(required_bytes=want),
                volume_capability=s.mount_cap()))
            check(r.capacity_bytes == want, "expanded to %d, wanted %d" % (r.capacity_bytes, want))
            check(r.node_expansion_required, "a filesystem volume needs the node to grow it")

    for name, fn in [
        ("ControllerGetCapabilities: known types, no attach", capabilities),
        ("GetCapacity: empty request", get_capacity),
        ("ListVolumes: entries have ids", list_volumes_ids),
        ("ListVolumes: invalid token is ABORTED", list_volumes_bad_token),
        ("ListVolumes: count follows create and delete", list_volumes_count),
        ("ListVolumes: max_entries and next_token", list_volumes_pages),
        ("CreateVolume: no name is INVALID_ARGUMENT", create_no_name),
        ("CreateVolume: no capabilities is INVALID_ARGUMENT", create_no_caps),
        ("CreateVolume: normal", create_normal),
        ("CreateVolume: capacity at least requested", create_capacity),
        ("CreateVolume: same name and size is idempotent (x10)", create_idempotent),
        ("CreateVolume: same name, other size is ALREADY_EXISTS", create_same_name_other_size),
        ("CreateVolume: same name, other fsType is ALREADY_EXISTS", create_same_name_other_fs_type),
        ("CreateVolume: same name, other content source is ALREADY_EXISTS", create_same_name_other_source),
        ("CreateVolume: 128-byte name, twice", create_max_name),
        ("CreateVolume: from snapshot echoes content_source", create_from_snapshot),
        ("CreateVolume: from a missing snapshot is NOT_FOUND", create_from_missing_snapshot),
        ("CreateVolume: clone of a volume echoes content_source", create_from_volume),
        ("CreateVolume: clone of a missing volume is NOT_FOUND", create_from_missing_volume),
        ("DeleteVolume: no id is INVALID_ARGUMENT", delete_no_id),
        ("DeleteVolume: invalid id is OK", delete_invalid_id),
        ("DeleteVolume: created volume, twice", delete_created),
        ("ValidateVolumeCapabilities: no id is INVALID_ARGUMENT", validate_no_id),
        ("ValidateVolumeCapabilities: no capabilities is INVALID_ARGUMENT", validate_no_caps),
        ("ValidateVolumeCapabilities: mount, block, xfs confirmed", validate_ok),
        ("ValidateVolumeCapabilities: multi-node mode not confirmed", validate_unsupported),
        ("ValidateVolumeCapabilities: unknown id is NOT_FOUND", validate_unknown),
        ("ControllerExpandVolume: no id is INVALID_ARGUMENT", expand_no_id),
        ("ControllerExpandVolume: no capacity is INVALID_ARGUMENT", expand_no_capacity),
        ("ControllerExpandVolume: to size + 1 GiB, twice", expand_ok),
    ]:
        s.run("Controller " + name, fn)


# ---------------------------------------------------------------------------------------------
# Controller, snapshots

def snapshot_cases(s):
    T = csi.ControllerServiceCapability.RPC
    IA = grpc.StatusCode.INVALID_ARGUMENT

    def create_no_name():
        s.need(T.CREATE_DELETE_SNAPSHOT)
        vol = s.create_volume(size=MIB)
        expect_code(IA, s.ctrl.CreateSnapshot, csi.CreateSnapshotRequest(source_volume_id=vol.volume_id))

    def create_no_source():
        s.need(T.CREATE_DELETE_SNAPSHOT)
        expect_code(IA, s.ctrl.CreateSnapshot, csi.CreateSnapshotRequest(name=unique("s")))

    def create_idempotent():
        s.need(T.CREATE_DELETE_SNAPSHOT)
        vol = s.create_volume(size=MIB)
        name = unique("snap")
        a = s.create_snapshot(vol.volume_id, name)
        b = s.ctrl.CreateSnapshot(csi.CreateSnapshotRequest(source_volume_id=vol.volume_id, name=name)).snapshot
        check(a.snapshot_id == b.snapshot_id and a.creation_time == b.creation_time, "%s != %s" % (a, b))
        check(a.ready_to_use and a.size_bytes == vol.capacity_bytes, "ready %s size %d" % (a.ready_to_use, a.size_bytes))
        check(a.source_volume_id == vol.volume_id, "source %s" % a.source_volume_id)

    def create_same_name_other_source():
        s.need(T.CREATE_DELETE_SNAPSHOT)
        v1, v2 = s.create_volume(size=MIB), s.create_volume(size=MIB)
        name = unique("snap")
        s.create_snapshot(v1.volume_id, name)
        expect_code(grpc.StatusCode.ALREADY_EXISTS, s.ctrl.CreateSnapshot,
                    csi.CreateSnapshotRequest(source_volume_id=v2.volume_id, name=name))

    def create_max_name():
        s.need(T.CREATE_DELETE_SNAPSHOT)
        vol = s.create_volume(size=MIB)
        name = "s" * 128
        a = s.create_snapshot(vol.volume_id, name)
        b = s.ctrl.CreateSnapshot(csi.CreateSnapshotRequest(source_volume_id=vol.volume_id, name=name)).snapshot
        check(a.snapshot_id == b.snapshot_id, "not idempotent")

    def delete_no_id():
        s.need(T.CREATE_DELETE_SNAPSHOT)
        expect_code(IA, s.ctrl.DeleteSnapshot, csi.DeleteSnapshotRequest())

    def delete_fake():
        s.need(T.CREATE_DELETE_SNAPSHOT)
        s.ctrl.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id="reallyfakesnapshotid"))

    def delete_created():
        s.need(T.CREATE_DELETE_SNAPSHOT)
        vol = s.create_volume(size=MIB)
        snap = s.create_snapshot(vol.volume_id)
        s.cleanup.pop()
        for _ in range(2):
            s.ctrl.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
        r = s.ctrl.ListSnapshots(csi.ListSnapshotsRequest(snapshot_id=snap.snapshot_id))
        check(len(r.entries) == 0, "deleted snapshot still listed")

    def list_fields():
        s.need(T.LIST_SNAPSHOTS)
        vol = s.create_volume(size=MIB)
        s.create_snapshot(vol.volume_id)
        for e in s.ctrl.ListSnapshots(csi.ListSnapshotsRequest()).entries:
            sn = e.snapshot
            check(sn.snapshot_id and sn.source_volume_id and sn.creation_time.seconds > 0 and sn.size_bytes > 0,
                  "incomplete entry %s" % sn)

    def three():
        vols = [s.create_volume(size=MIB) for _ in range(3)]
        return vols, [s.create_snapshot(v.volume_id) for v in vols]

    def list_by_id():
        s.need(T.LIST_SNAPSHOTS)
        _, snaps = three()
        r = s.ctrl.ListSnapshots(csi.ListSnapshotsRequest(snapshot_id=snaps[1].snapshot_id))
        check(len(r.entries) == 1 and r.entries[0].snapshot.snapshot_id == snaps[1].snapshot_id, "got %s" % r)

    def list_unknown_id():
        s.need(T.LIST_SNAPSHOTS)
        for bad in ["none-such-snapshot", "%s/csi-%s@csi-%s" % (s.node, "0" * 24, "0" * 24)]:
            r = s.ctrl.ListSnapshots(csi.ListSnapshotsRequest(snapshot_id=bad))
            check(len(r.entries) == 0, "entries for %s" % bad)

    def list_by_source():
        s.need(T.LIST_SNAPSHOTS)
        vols, snaps = three()
        r = s.ctrl.ListSnapshots(csi.ListSnapshotsRequest(source_volume_id=vols[2].volume_id))
        check(len(r.entries) == 1 and r.entries[0].snapshot.snapshot_id == snaps[2].snapshot_id, "got %s" % r)

    def list_unknown_source():
        s.need(T.LIST_SNAPSHOTS)
        r = s.ctrl.ListSnapshots(csi.ListSnapshotsRequest(source_volume_id="none-such-volume"))
        check(len(r.entries) == 0, "entries for an unknown source")

    def list_count():
        s.need(T.LIST_SNAPSHOTS)
        vol = s.create_volume(size=MIB)
        before = len(s.ctrl.ListSnapshots(csi.ListSnapshotsRequest()).entries)
        snap = s.create_snapshot(vol.volume_id)
        check(len(s.ctrl.ListSnapshots(csi.ListSnapshotsRequest()).entries) == before + 1, "did not grow")
        s.ctrl.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
        s.cleanup.pop()
        check(len(s.ctrl.ListSnapshots(csi.ListSnapshotsRequest()).entries) == before, "did not shrink back")

    def list_pages():
        s.need(T.LIST_SNAPSHOTS)
        vol = s.create_volume(size=MIB)
        total = len(s.ctrl.ListSnapshots(csi.ListSnapshotsRequest()).entries)
        while total < 5:
            s.create_snapshot(vol.volume_id)
            total += 1
        first = s.ctrl.ListSnapshots(csi.ListSnapshotsRequest(max_entries=2))
        check(len(first.entries) == 2 and first.next_token, "first page %d entries" % len(first.entries))
        rest = s.ctrl.ListSnapshots(csi.ListSnapshotsRequest(starting_token=first.next_token))
        check(len(rest.entries) == total - 2, "rest %d, want %d" % (len(rest.entries), total - 2))

    def list_bad_token():
        s.need(T.LIST_SNAPSHOTS)
        expect_code(grpc.StatusCode.ABORTED, s.ctrl.ListSnapshots, csi.ListSnapshotsRequest(starting_token="invalid-token"))

    def get_empty():
        s.need(T.GET_SNAPSHOT)
        expect_code(IA, s.ctrl.GetSnapshot, csi.GetSnapshotRequest())

    def get_by_id():
        s.need(T.GET_SNAPSHOT)
        vol = s.create_volume(size=MIB)
        snap = s.create_snapshot(vol.volume_id)
        got = s.ctrl.GetSnapshot(csi.GetSnapshotRequest(snapshot_id=snap.snapshot_id)).snapshot
        check(got == snap, "%s != %s" % (got, snap))

    def get_unknown():
        s.need(T.GET_SNAPSHOT)
        expect_code(grpc.StatusCode.NOT_FOUND, s.ctrl.GetSnapshot, csi.GetSnapshotRequest(snapshot_id="none-such"))

    for name, fn in [
        ("CreateSnapshot: no name is INVALID_ARGUMENT", create_no_name),
        ("CreateSnapshot: no source is INVALID_ARGUMENT", create_no_source),
        ("CreateSnapshot: same name and source is idempotent; ready, restore size", create_idempotent),
        ("CreateSnapshot: same name, other source is ALREADY_EXISTS", create_same_name_other_source),
        ("CreateSnapshot: 128-byte name, twice", create_max_name),
        ("DeleteSnapshot: no id is INVALID_ARGUMENT", delete_no_id),
        ("DeleteSnapshot: unknown id is OK", delete_fake),
        ("DeleteSnapshot: created snapshot, twice", delete_created),
        ("ListSnapshots: entries are complete", list_fields),
        ("ListSnapshots: by snapshot_id, exactly one", list_by_id),
        ("ListSnapshots: unknown snapshot_id is empty", list_unknown_id),
        ("ListSnapshots: by source_volume_id, exactly one", list_by_source),
        ("ListSnapshots: unknown source is empty", list_unknown_source),
        ("ListSnapshots: count follows create and delete", list_count),
        ("ListSnapshots: max_entries=2 then the rest", list_pages),
        ("ListSnapshots: invalid token is ABORTED", list_bad_token),
        ("GetSnapshot: empty request is INVALID_ARGUMENT", get_empty),
        ("GetSnapshot: by id", get_by_id),
        ("GetSnapshot: unknown id is NOT_FOUND", get_unknown),
    ]:
        s.run("Controller " + name, fn)


# ---------------------------------------------------------------------------------------------
# Node

# ---------------------------------------------------------------------------------------------
# GroupController: csi-sanity's groupcontroller.go cases, then the group's life with members

def group_cases(s):
    IA = grpc.StatusCode.INVALID_ARGUMENT
    NF = grpc.StatusCode.NOT_FOUND

    def capabilities():
        s.need_group()
        known = set(csi.GroupControllerServiceCapability.RPC.Type.values()) - {0}
        for t in s.group_caps:
            check(t in known, "unknown group capability %s" % t)

    def create_no_name():
        s.need_group()
        vol = s.create_volume(size=MIB)
        expect_code(IA, s.group.CreateVolumeGroupSnapshot,
                    csi.CreateVolumeGroupSnapshotRequest(source_volume_ids=[vol.volume_id]))

    def create_no_sources():
        s.need_group()
        expect_code(IA, s.group.CreateVolumeGroupSnapshot,
                    csi.CreateVolumeGroupSnapshotRequest(name=unique("g")))

    def get_no_id():
        s.need_group()
        expect_code(IA, s.group.GetVolumeGroupSnapshot, csi.GetVolumeGroupSnapshotRequest())

    def get_unknown():
        s.need_group()
        for ident in ["fake-group-id", s.node + "/group@csi-000000000000000000000000"]:
            expect_code(NF, s.group.GetVolumeGroupSnapshot,
                        csi.GetVolumeGroupSnapshotRequest(group_snapshot_id=ident))

    def delete_no_id():
        s.need_group()
        expect_code(IA, s.group.DeleteVolumeGroupSnapshot, csi.DeleteVolumeGroupSnapshotRequest())

    def delete_unknown():
        s.need_group()
        for ident in ["fake-group-id", s.node + "/group@csi-000000000000000000000000"]:
            s.group.DeleteVolumeGroupSnapshot(csi.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=ident))

    def create_idempotent_and_conflicts():
        s.need_group()
        v1, v2, v3 = (s.create_volume(size=MIB) for _ in range(3))
        name = unique("group")
        a = s.create_group([v1.volume_id, v2.volume_id], name)
        b = s.group.CreateVolumeGroupSnapshot(csi.CreateVolumeGroupSnapshotRequest(
            name=name, source_volume_ids=[v2.volume_id, v1.volume_id])).group_snapshot
        check(a == b, "same name, same volumes, another answer: %s != %s" % (a, b))
        check(a.ready_to_use and a.HasField("creation_time"), "not ready or no time: %s" % a)
        check(sorted(m.source_volume_id for m in a.snapshots) == sorted([v1.volume_id, v2.volume_id]),
              "members %s" % a.snapshots)
        for m in a.snapshots:
            check(m.group_snapshot_id == a.group_snapshot_id and m.ready_to_use and m.size_bytes == MIB,
                  "member %s" % m)
        expect_code(grpc.StatusCode.ALREADY_EXISTS, s.group.CreateVolumeGroupSnapshot,
                    csi.CreateVolumeGroupSnapshotRequest(name=name, source_volume_ids=[v1.volume_id, v3.volume_id]))
        expect_code(NF, s.group.CreateVolumeGroupSnapshot, csi.CreateVolumeGroupSnapshotRequest(
            name=unique("g"), source_volume_ids=[v1.volume_id, s.node + "/csi-000000000000000000000000"]))
        expect_code(NF, s.group.CreateVolumeGroupSnapshot, csi.CreateVolumeGroupSnapshotRequest(
            name=unique("g"), source_volume_ids=["fake-vol-id"]))
        expect_code(grpc.StatusCode.FAILED_PRECONDITION, s.group.CreateVolumeGroupSnapshot,
                    csi.CreateVolumeGroupSnapshotRequest(name=unique("g"), source_volume_ids=[
                        v1.volume_id, "other-node/" + v2.volume_id.split("/", 1)[1]]))
        expect_code(IA, s.group.CreateVolumeGroupSnapshot, csi.CreateVolumeGroupSnapshotRequest(
            name=unique("g"), source_volume_ids=[v1.volume_id], parameters={"bogus": "1"}))

    def members_are_snapshots_of_the_group():
        s.need_group()
        v1, v2 = s.create_volume(size=MIB), s.create_volume(size=MIB)
        g = s.create_group([v1.volume_id, v2.volume_id])
        ids = [m.snapshot_id for m in g.snapshots]
        for m in g.snapshots:
            listed = s.ctrl.ListSnapshots(csi.ListSnapshotsRequest(snapshot_id=m.snapshot_id)).entries
            check(len(listed) == 1 and listed[0].snapshot.group_snapshot_id == g.group_snapshot_id,
                  "ListSnapshots: %s" % listed)
            got = s.ctrl.GetSnapshot(csi.GetSnapshotRequest(snapshot_id=m.snapshot_id)).snapshot
            check(got.group_snapshot_id == g.group_snapshot_id, "GetSnapshot: %s" % got)
            expect_code(IA, s.ctrl.DeleteSnapshot, csi.DeleteSnapshotRequest(snapshot_id=m.snapshot_id))
        got = s.group.GetVolumeGroupSnapshot(csi.GetVolumeGroupSnapshotRequest(
            group_snapshot_id=g.group_snapshot_id, snapshot_ids=list(reversed(ids)))).group_snapshot
        check(got == g, "Get: %s != %s" % (got, g))
        expect_code(IA, s.group.GetVolumeGroupSnapshot, csi.GetVolumeGroupSnapshotRequest(
            group_snapshot_id=g.group_snapshot_id, snapshot_ids=ids[:1]))
        expect_code(IA, s.group.DeleteVolumeGroupSnapshot, csi.DeleteVolumeGroupSnapshotRequest(
            group_snapshot_id=g.group_snapshot_id, snapshot_ids=ids + ["x"]))
        # A single snapshot of a member volume is not in the group.
        single = s.create_snapshot(v1.volume_id)
        check(single.group_snapshot_id == "", "single snapshot in a group: %s" % single)

    def restore_a_member():
        s.need_group()
        v1, v2 = s.create_volume(size=MIB), s.create_volume(size=MIB)
        g = s.create_group([v1.volume_id, v2.volume_id])
        member = g.snapshots[0]
        source = csi.VolumeContentSource(snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=member.snapshot_id))
        vol = s.restore(unique("from-member"), source, size=MIB)
        check(vol.content_source.snapshot.snapshot_id == member.snapshot_id, "content_source: %s" % vol)

    def delete_removes_members():
        s.need_group()
        v1, v2 = s.create_volume(size=MIB), s.create_volume(size=MIB)
        g = s.create_group([v1.volume_id, v2.volume_id])
        before = len(s.ctrl.ListSnapshots(csi.ListSnapshotsRequest()).entries)
        ids = [m.snapshot_id for m in g.snapshots]
        s.group.DeleteVolumeGroupSnapshot(csi.DeleteVolumeGroupSnapshotRequest(
            group_snapshot_id=g.group_snapshot_id, snapshot_ids=ids))
        after = len(s.ctrl.ListSnapshots(csi.ListSnapshotsRequest()).entries)
        check(after == before - 2, "ListSnapshots %d -> %d" % (before, after))
        for ident in ids:
            check(not s.ctrl.ListSnapshots(csi.ListSnapshotsRequest(snapshot_id=ident)).entries, "member %s left" % ident)
        expect_code(NF, s.group.GetVolumeGroupSnapshot,
                    csi.GetVolumeGroupSnapshotRequest(group_snapshot_id=g.group_snapshot_id))
        # Again: a retry of a delete that already happened.
        s.group.DeleteVolumeGroupSnapshot(csi.DeleteVolumeGroupSnapshotRequest(
            group_snapshot_id=g.group_snapshot_id, snapshot_ids=ids))

    def member_volume_deleted_first():
        s.need_group()
        v1, v2 = s.create_volume(size=MIB), s.create_volume(size=MIB)
        g = s.create_group([v1.volume_id, v2.volume_id])
        before = s.agent_volume_names()
        # Kubernetes may delete a PV while its group snapshot remains: the volume is retired
        # and the group stays whole; the group's deletion then takes the volume with it.
        s.ctrl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=v1.volume_id))
        got = s.group.GetVolumeGroupSnapshot(csi.GetVolumeGroupSnapshotRequest(
            group_snapshot_id=g.group_snapshot_id)).group_snapshot
        check(len(got.snapshots) == 2 and got.ready_to_use, "after DeleteVolume: %s" % got)
        check(s.agent_volume_names() == before, "the member volume went early")
        s.group.DeleteVolumeGroupSnapshot(csi.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=g.group_snapshot_id))
        check(len(s.agent_volume_names()) == len(before) - 1, "the retired member volume was not reaped")

    for name, fn in [
        ("GroupControllerGetCapabilities: known types only", capabilities),
        ("CreateVolumeGroupSnapshot: no name is INVALID_ARGUMENT", create_no_name),
        ("CreateVolumeGroupSnapshot: no source volumes is INVALID_ARGUMENT", create_no_sources),
        ("GetVolumeGroupSnapshot: no id is INVALID_ARGUMENT", get_no_id),
        ("GetVolumeGroupSnapshot: unknown id is NOT_FOUND", get_unknown),
        ("DeleteVolumeGroupSnapshot: no id is INVALID_ARGUMENT", delete_no_id),
        ("DeleteVolumeGroupSnapshot: unknown id is OK", delete_unknown),
        ("CreateVolumeGroupSnapshot: idempotent, ALREADY_EXISTS, NOT_FOUND, other node", create_idempotent_and_conflicts),
        ("Group members: listed with their group, not deletable alone, snapshot_ids checked", members_are_snapshots_of_the_group),
        ("Group members: restorable with CreateVolume", restore_a_member),
        ("DeleteVolumeGroupSnapshot: members go, retries are OK", delete_removes_members),
        ("DeleteVolume of a member's volume: retired until the group goes", member_volume_deleted_first),
    ]:
        s.run("GroupController " + name, fn)


def node_cases(s):
    IA = grpc.StatusCode.INVALID_ARGUMENT
    N = csi.NodeServiceCapability.RPC
    tmp = tempfile.mkdtemp(prefix="csi-node-")
    target, staging = os.path.join(tmp, "csi-mount", "target"), os.path.join(tmp, "csi-staging")

    def capabilities():
        known = set(N.Type.values()) - {0}
        for t in s.node_caps:
            check(t in known, "unknown node capability %s" % t)

    def info():
        r = s.nodesvc.NodeGetInfo(csi.NodeGetInfoRequest())
        check(r.node_id == s.node and r.max_volumes_per_node >= 0, "%s" % r)
        check(r.accessible_topology.segments[TOPOLOGY_KEY] == s.node, "topology %s" % r.accessible_topology)

    def publish_args():
        vol = s.create_volume(size=MIB)
        cap = s.mount_cap()
        for req in [
            csi.NodePublishVolumeRequest(target_path=target, staging_target_path=staging, volume_capability=cap),
            csi.NodePublishVolumeRequest(volume_id=vol.volume_id, staging_target_path=staging, volume_capability=cap),
            csi.NodePublishVolumeRequest(volume_id=vol.volume_id, target_path=target, staging_target_path=staging),
        ]:
            expect_code(IA, s.nodesvc.NodePublishVolume, req)

    def unpublish_args():
        expect_code(IA, s.nodesvc.NodeUnpublishVolume, csi.NodeUnpublishVolumeRequest(target_path=target))
        expect_code(IA, s.nodesvc.NodeUnpublishVolume, csi.NodeUnpublishVolumeRequest(volume_id="x"))

    def stage_args():
        vol = s.create_volume(size=MIB)
        cap = s.mount_cap()
        for req in [
            csi.NodeStageVolumeRequest(staging_target_path=staging, volume_capability=cap),
            csi.NodeStageVolumeRequest(volume_id=vol.volume_id, volume_capability=cap),
            csi.NodeStageVolumeRequest(volume_id=vol.volume_id, staging_target_path=staging),
        ]:
            expect_code(IA, s.nodesvc.NodeStageVolume, req)

    def unstage_args():
        expect_code(IA, s.nodesvc.NodeUnstageVolume, csi.NodeUnstageVolumeRequest(staging_target_path=staging))
        expect_code(IA, s.nodesvc.NodeUnstageVolume, csi.NodeUnstageVolumeRequest(volume_id="x"))

    def stats_args():
        expect_code(IA, s.nodesvc.NodeGetVolumeStats, csi.NodeGetVolumeStatsRequest(volume_path=tmp))
        expect_code(IA, s.nodesvc.NodeGetVolumeStats, csi.NodeGetVolumeStatsRequest(volume_id="x"))
        expect_code(grpc.StatusCode.NOT_FOUND, s.nodesvc.NodeGetVolumeStats,
                    csi.NodeGetVolumeStatsRequest(volume_id="fake-vol-id-0123456789", volume_path=tmp))
        vol = s.create_volume(size=MIB)
        expect_code(grpc.StatusCode.NOT_FOUND, s.nodesvc.NodeGetVolumeStats,
                    csi.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path="some/path"))

    def expand_args():
        expect_code(IA, s.nodesvc.NodeExpandVolume, csi.NodeExpandVolumeRequest(volume_path=tmp))
        expect_code(IA, s.nodesvc.NodeExpandVolume, csi.NodeExpandVolumeRequest(volume_id="x"))
        expect_code(grpc.StatusCode.NOT_FOUND, s.nodesvc.NodeExpandVolume,
                    csi.NodeExpandVolumeRequest(volume_id="fake-vol-id-0123456789", volume_path=tmp))

    def publish_unstaged():
        vol = s.create_volume(size=MIB)
        msg = expect_code(grpc.StatusCode.FAILED_PRECONDITION, s.nodesvc.NodePublishVolume, csi.NodePublishVolumeRequest(
            volume_id=vol.volume_id, staging_target_path=staging, target_path=target, volume_capability=s.mount_cap()))
        check("not staged" in msg, msg)
        check(not os.path.exists(target), "a refused publish left its target behind")

    def undo_nothing():
        vol = s.create_volume(size=MIB)
        os.makedirs(target, exist_ok=True)
        for _ in range(2):
            s.nodesvc.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=vol.volume_id, target_path=target))
            s.nodesvc.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=vol.volume_id, staging_target_path=staging))
        check(not os.path.exists(target), "unpublish left the target path")

    def lifecycle(count):
        def case():
            s.need_kernel()
            vol = s.create_volume(size=64 * MIB)
            cap = s.mount_cap()
            for _ in range(count):
                s.nodesvc.NodeStageVolume(csi.NodeStageVolumeRequest(
                    volume_id=vol.volume_id, staging_target_path=staging, volume_capability=cap))
            for _ in range(count):
                s.nodesvc.NodePublishVolume(csi.NodePublishVolumeRequest(
                    volume_id=vol.volume_id, staging_target_path=staging, target_path=target, volume_capability=cap))
            check(os.path.isdir(target), "target path not created")
            st = s.nodesvc.NodeGetVolumeStats(csi.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=target))
            check(len(st.usage) > 0, "no usage")
            for _ in range(count):
                s.nodesvc.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=vol.volume_id, target_path=target))
            check(not os.path.exists(target), "target path left behind")
            for _ in range(count):
                s.nodesvc.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=vol.volume_id, staging_target_path=staging))
        return case

    for name, fn in [
        ("NodeGetCapabilities: known types", capabilities),
        ("NodeGetInfo: node id and topology", info),
        ("NodePublishVolume: missing id, target or capability is INVALID_ARGUMENT", publish_args),
        ("NodeUnpublishVolume: missing id or target is INVALID_ARGUMENT", unpublish_args),
        ("NodeStageVolume: missing id, staging path or capability is INVALID_ARGUMENT", stage_args),
        ("NodeUnstageVolume: missing id or staging path is INVALID_ARGUMENT", unstage_args),
        ("NodeGetVolumeStats: missing fields, unknown volume, unpublished path", stats_args),
        ("NodeExpandVolume: missing fields, unknown volume", expand_args),
        ("NodePublishVolume: not staged is FAILED_PRECONDITION, nothing made", publish_unstaged),
        ("NodeUnpublishVolume, NodeUnstageVolume: nothing to undo is OK, twice", undo_nothing),
        ("Node: stage, publish, stats, unpublish, unstage", lifecycle(1)),
        ("Node: the same, each call repeated (x10)", lifecycle(IDEMPOTENT_COUNT)),
    ]:
        s.run(name, fn)


# ---------------------------------------------------------------------------------------------
# The sidecars' call sequences (external-snapshotter, external-provisioner --node-deployment)

def sidecar_cases(s):
    T = csi.ControllerServiceCapability.RPC

    def snapshotter():
        check(s.identity.Probe(csi.ProbeRequest()).ready.value, "ProbeForever would wait")
        check(s.identity.GetPluginInfo(csi.GetPluginInfoRequest()).name == "csi.multisnap.dev", "driver name")
        check(T.CREATE_DELETE_SNAPSHOT in s.ctrl_caps, "the snapshotter exits without CREATE_DELETE_SNAPSHOT")
        vol = s.create_volume(size=64 * MIB)
        uid = "3f0c6ad2-%s" % unique("uid")
        req = csi.CreateSnapshotRequest(
            source_volume_id=vol.volume_id, name="snapshot-" + uid,
            parameters={"csi.storage.k8s.io/volumesnapshot/name": "snap-1",
                        "csi.storage.k8s.io/volumesnapshot/namespace": "default",
                        "csi.storage.k8s.io/volumesnapshotcontent/name": "snapcontent-" + uid})
        for attempt in range(30):  # re-issued until ready_to_use
            snap = s.ctrl.CreateSnapshot(req).snapshot
            if attempt == 0:
                s.cleanup.append(("snapshot", snap.snapshot_id))
            if snap.ready_to_use:
                break
            time.sleep(1)
        check(snap.ready_to_use, "never ready")
        check(snap.size_bytes == vol.capacity_bytes, "restoreSize %d != %d" % (snap.size_bytes, vol.capacity_bytes))
        again = s.ctrl.CreateSnapshot(req).snapshot
        check(again == snap, "a re-issued CreateSnapshot changed the answer")
        listed = s.ctrl.ListSnapshots(csi.ListSnapshotsRequest(snapshot_id=snap.snapshot_id)).entries
        check(len(listed) == 1 and listed[0].snapshot.ready_to_use, "GetSnapshotStatus: %s" % listed)

    def provisioner():
        check(csi.PluginCapability.Service.VOLUME_ACCESSIBILITY_CONSTRAINTS in s.plugin_caps, "no topology")
        check(T.GET_CAPACITY in s.ctrl_caps, "per-node mode needs GetCapacity")
        topo = s.nodesvc.NodeGetInfo(csi.NodeGetInfoRequest()).accessible_topology
        cap = s.ctrl.GetCapacity(csi.GetCapacityRequest(volume_capabilities=[s.mount_cap("ext4")], accessible_topology=topo))
        check(cap.available_capacity > 0, "no capacity on this node's segment: %s" % cap)
        other = csi.Topology(segments={TOPOLOGY_KEY: "some-other-node"})
        cap = s.ctrl.GetCapacity(csi.GetCapacityRequest(accessible_topology=other))
        check(cap.available_capacity == 0, "capacity reported for another node: %s" % cap)
        req = s.create_req("pvc-" + unique("uid"), size=GIB, cap=s.mount_cap("ext4"),
                           parameters={"chunkSize": "64Ki", "csi.storage.k8s.io/pvc/name": "data"},
                           accessibility_requirements=csi.TopologyRequirement(requisite=[topo], preferred=[topo]))
        vol = s.ctrl.CreateVolume(req).volume
        s.cleanup.append(("volume", vol.volume_id))
        check(list(vol.accessible_topology) == [topo], "topology %s" % vol.accessible_topology)
        check(vol.volume_context.get("fsType") == "ext4", "volume_context %s" % dict(vol.volume_context))
        req = s.create_req("pvc-" + unique("uid"), size=GIB,
                           accessibility_requirements=csi.TopologyRequirement(requisite=[other]))
        expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED, s.ctrl.CreateVolume, req)

    def provisioner_restore():
        vol = s.create_volume(size=64 * MIB)
        snap = s.create_snapshot(vol.volume_id)
        source = csi.VolumeContentSource(snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id))
        # A larger PVC than restoreSize is allowed (the provisioner only warns).
        restored = s.restore("pvc-" + unique("uid"), source, size=128 * MIB)
        check(restored.content_source == source, "content source missing: the provisioner would delete the volume")
        check(restored.capacity_bytes == 128 * MIB, "capacity %d" % restored.capacity_bytes)
        # A snapshot of the restored volume works too.
        s.create_snapshot(restored.volume_id)

    def outlive():
        s.need(T.CREATE_DELETE_SNAPSHOT)
        before = s.agent_volume_names()
        vol = s.create_volume(size=64 * MIB)
        snap = s.create_snapshot(vol.volume_id)
        snap_cleanup = s.cleanup.pop()
        s.cleanup.pop()  # the volume: deleted by this case
        s.cleanup.append(snap_cleanup)
        s.ctrl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))
        s.ctrl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))
        ids = [e.volume.volume_id for e in s.ctrl.ListVolumes(csi.ListVolumesRequest()).entries]
        check(vol.volume_id not in ids, "deleted volume still listed")
        expect_code(grpc.StatusCode.NOT_FOUND, s.ctrl.ValidateVolumeCapabilities,
                    csi.ValidateVolumeCapabilitiesRequest(volume_id=vol.volume_id, volume_capabilities=[s.mount_cap()]))
        expect_code(grpc.StatusCode.NOT_FOUND, s.ctrl.CreateSnapshot,
                    csi.CreateSnapshotRequest(source_volume_id=vol.volume_id, name=unique("late")))
        got = s.ctrl.GetSnapshot(csi.GetSnapshotRequest(snapshot_id=snap.snapshot_id)).snapshot
        check(got.ready_to_use and got.size_bytes == vol.capacity_bytes, "snapshot lost its volume: %s" % got)
        check(len(s.agent_volume_names() - before) == 1, "the origin is needed by the snapshot and must stay")
        s.run_cleanup()  # the last snapshot goes, and the retired volume with it
        check(s.agent_volume_names() == before, "the retired volume outlived its last snapshot")

    def restore_from_retired():
        s.need(T.CREATE_DELETE_SNAPSHOT)
        vol = s.create_volume(size=64 * MIB)
        snap = s.create_snapshot(vol.volume_id)
        s.ctrl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))
        source = csi.VolumeContentSource(snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id))
        restored = s.restore(unique("from-retired"), source, size=64 * MIB)
        check(restored.content_source == source, "content source not echoed")

    def concurrent_creates():
        from concurrent.futures import ThreadPoolExecutor
        before = s.agent_volume_names()
        name = unique("race")

        def create(_):
            try:
                return ("OK", s.ctrl.CreateVolume(s.create_req(name, MIB)).volume.volume_id)
            except grpc.RpcError as e:
                return (e.code().name, e.details())

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(create, range(8)))
        ids = {a[1] for a in answers if a[0] == "OK"}
        for code, _ in answers:
            check(code in ("OK", "ABORTED"), "concurrent CreateVolume answered %s" % (answers,))
        # Whichever calls were refused, a retry gets the one volume.
        final = s.ctrl.CreateVolume(s.create_req(name, MIB)).volume.volume_id
        s.cleanup.append(("volume", final))
        check(ids <= {final}, "two volumes for one name: %s" % ids)
        check(len(s.agent_volume_names() - before) == 1, "not exactly one agent volume")

    def recreate_after_retire():
        s.need(T.CREATE_DELETE_SNAPSHOT)
        name = unique("reused")
        vol = s.create_volume(name, size=MIB)
        s.create_snapshot(vol.volume_id)
        s.ctrl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))
        again = s.ctrl.CreateVolume(s.create_req(name, MIB)).volume
        s.cleanup.append(("volume", again.volume_id))
        check(again.volume_id != vol.volume_id, "a new volume of a reused name must not be the retired one")

    for name, fn in [
        ("Sidecars: external-snapshotter sequence", snapshotter),
        ("Sidecars: external-provisioner per-node sequence (topology, capacity)", provisioner),
        ("Sidecars: external-provisioner restore (content source echoed, larger size)", provisioner_restore),
        ("Snapshots outlive their volume: retired, then reaped with the last snapshot", outlive),
        ("Snapshots outlive their volume: restore from a retired volume's snapshot", restore_from_retired),
        ("Snapshots outlive their volume: the name can be used again", recreate_after_retire),
        ("Concurrent CreateVolume of one name: OK or ABORTED, one volume", concurrent_creates),
    ]:
        s.run(name, fn)


# ---------------------------------------------------------------------------------------------
# Bad input: the spec's code, a message a person can act on, nothing half-made

def bad_input_cases(s):
    IA = grpc.StatusCode.INVALID_ARGUMENT

    def long_names():
        before = s.agent_volume_names()
        msg = expect_code(IA, s.ctrl.CreateVolume, s.create_req("v" * 129, MIB))
        check("128" in msg, "message does not say the limit: %s" % msg)
        vol = s.create_volume(size=MIB)
        msg = expect_code(IA, s.ctrl.CreateSnapshot, csi.CreateSnapshotRequest(source_volume_id=vol.volume_id, name="s" * 129))
        check("128" in msg, msg)
        check(s.agent_volume_names() - before == {vol.volume_id.split("/")[1]}, "something half-made")

    def bad_parameters():
        before = s.agent_volume_names()
        for params, says in [({"chunkSize": "3000"}, "power of two"), ({"storeFullPolicy": "drop"}, "invalidate-oldest"),
                             ({"fsType": "btrfs"}, "btrfs"), ({"colour": "blue"}, "unknown parameter")]:
            msg = expect_code(IA, s.ctrl.CreateVolume, s.create_req(unique("p"), MIB, parameters=params))
            check(says in msg, "%s: %s" % (params, msg))
        msg = expect_code(IA, s.ctrl.CreateVolume, s.create_req(unique("p"), MIB, cap=s.mount_cap("btrfs")))
        check("ext4 or xfs" in msg, msg)
        mm = csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume(),
                                  access_mode=csi.VolumeCapability.AccessMode(mode=csi.VolumeCapability.AccessMode.MULTI_NODE_MULTI_WRITER))
        expect_code(IA, s.ctrl.CreateVolume, s.create_req(unique("p"), MIB, cap=mm))
        check(s.agent_volume_names() == before, "a refused CreateVolume left a volume")

    def bad_sizes():
        before = s.agent_volume_names()
        expect_code(IA, s.ctrl.CreateVolume, s.create_req(unique("p"), 2 * MIB, limit=MIB))
        expect_code(IA, s.ctrl.CreateVolume, s.create_req(unique("p"), -1))
        msg = expect_code(grpc.StatusCode.OUT_OF_RANGE, s.ctrl.CreateVolume, s.create_req(unique("p"), 65 << 40))
        check("64 TiB" in msg, msg)
        expect_code(grpc.StatusCode.OUT_OF_RANGE, s.ctrl.CreateVolume, s.create_req(unique("p"), 4097, limit=5000))
        check(s.agent_volume_names() == before, "a refused CreateVolume left a volume")

    def restore_smaller():
        before = s.agent_volume_names()
        vol = s.create_volume(size=64 * MIB)
        snap = s.create_snapshot(vol.volume_id)
        source = csi.VolumeContentSource(snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id))
        msg = expect_code(grpc.StatusCode.OUT_OF_RANGE, s.ctrl.CreateVolume,
                          s.create_req(unique("small"), 32 * MIB, limit=32 * MIB, volume_content_source=source))
        check("smaller than its source" in msg, msg)
        check(len(s.agent_volume_names() - before) == 1, "the refused restore left a volume")

    def unknown_ids():
        expect_code(grpc.StatusCode.NOT_FOUND, s.ctrl.CreateSnapshot,
                    csi.CreateSnapshotRequest(source_volume_id="fake-vol-id", name=unique("s")))
        expect_code(grpc.StatusCode.NOT_FOUND, s.ctrl.CreateSnapshot,
                    csi.CreateSnapshotRequest(source_volume_id="%s/csi-%s" % (s.node, "0" * 24), name=unique("s")))
        expect_code(grpc.StatusCode.NOT_FOUND, s.ctrl.ControllerExpandVolume,
                    csi.ControllerExpandVolumeRequest(volume_id="fake-vol-id", capacity_range=csi.CapacityRange(required_bytes=GIB)))
        # Another node's ids are that node's driver's business.
        other = "other-node/csi-%s" % ("0" * 24)
        msg = expect_code(grpc.StatusCode.FAILED_PRECONDITION, s.ctrl.DeleteVolume, csi.DeleteVolumeRequest(volume_id=other))
        check("other-node" in msg, msg)
        source = csi.VolumeContentSource(snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=other + "@csi-" + "0" * 24))
        msg = expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED, s.ctrl.CreateVolume, s.create_req(unique("x"), MIB, volume_content_source=source))
        check("other-node" in msg, msg)

    def malformed_tokens():
        for token in ["invalid-token", "-1", "99999999999999999999", "1e3", "\u00e9"]:
            expect_code(grpc.StatusCode.ABORTED, s.ctrl.ListSnapshots, csi.ListSnapshotsRequest(starting_token=token))
            expect_code(grpc.StatusCode.ABORTED, s.ctrl.ListVolumes, csi.ListVolumesRequest(starting_token=token))
        expect_code(IA, s.ctrl.ListVolumes, csi.ListVolumesRequest(max_entries=-1))

    for name, fn in [
        ("Bad input: 129-byte names", long_names),
        ("Bad input: StorageClass parameters and capabilities", bad_parameters),
        ("Bad input: capacity ranges", bad_sizes),
        ("Bad input: restore into a smaller size", restore_smaller),
        ("Bad input: unknown and foreign ids", unknown_ids),
        ("Bad input: malformed tokens", malformed_tokens),
    ]:
        s.run(name, fn)


def main():
    csi_socket, agent_socket, node = sys.argv[1:4]
    s = Sanity(csi_socket, agent_socket, node)
    identity_cases(s)
    controller_volume_cases(s)
    snapshot_cases(s)
    group_cases(s)
    node_cases(s)
    sidecar_cases(s)
    bad_input_cases(s)
    counts = {k: sum(1 for r in s.results if r[1] == k) for k in ("PASS", "FAIL", "SKIP")}
    reasons = sorted({r[2] for r in s.results if r[1] == "SKIP"})
    for r in reasons:
        print("skipped because: %s (%d)" % (r, sum(1 for x in s.results if x[2] == r)))
    print("SUMMARY ran=%d passed=%d failed=%d skipped=%d" % (
        counts["PASS"] + counts["FAIL"], counts["PASS"], counts["FAIL"], counts["SKIP"]))
    sys.exit(1 if counts["FAIL"] else 0)


if __name__ == "__main__":
    main()
