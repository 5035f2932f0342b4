"""Hostile input to what reads the grant path: the request's `storage` object and the containers the
backend checks before the engine sees them (chunk MAC). Property-based (hypothesis): a clear FrameError
or a valid spec, False or True, never another exception."""

import json

from hypothesis import given, settings, strategies as st

from reprise_gpu.engine import kv_io
from reprise_gpu.server.frames import FrameError, StorageSpec, parse_storage
from reprise_gpu.server.storage_io import check_mac, _header
from reprise_gpu.storage.chunk_mac import mac_key

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
                           max_leaves=25)
GRANT = {"key": "s/0.kv", "mode": "read", "method": "GET", "url": "http://127.0.0.1:1/o/s/0.kv", "headers": {}, "expires": 1}
CHUNK = {"grant": GRANT, "token_start": 0, "token_end": 5, "bytes": 10, "sha256": "a" * 64, "codec": "raw-bf16", "mac": None}


def mutate(base: dict, path: list[str], value):
    out = json.loads(json.dumps(base))
    node = out
    for k in path[:-1]:
        node = node[k] if isinstance(node, dict) else node[0]
    if isinstance(node, dict):
        node[path[-1]] = value
    return out


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, st.builds(lambda v: {"chunks": [v]}, json_values),
                 st.builds(lambda p, v: mutate({"chunks": [CHUNK], "restore_from": 0, "export_from": 5, "put": []}, p, v),
                           st.sampled_from([["chunks", "token_start"], ["chunks", "grant"], ["chunks", "sha256"],
                                            ["restore_from"], ["export_from"], ["put"], ["chunks", "mac"]]),
                           json_values)))
def test_parse_storage_gives_a_spec_or_a_frame_error(obj):
    try:
        spec = parse_storage(obj)
    except FrameError:
        return
    assert isinstance(spec, StorageSpec)
    for a, b in zip(spec.chunks, spec.chunks[1:]):
        assert a.token_end == b.token_start


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_mac_check_never_raises_on_hostile_bytes(data, with_prefix):
    if with_prefix:
        data = kv_io.PREFIX.pack(kv_io.MAGIC, 1, len(data)) + data
    from reprise_gpu.server.frames import GrantedChunk
    from reprise_gpu.storage.remote import Grant
    c = GrantedChunk(Grant.from_json(GRANT), 0, 5, len(data), "a" * 64, "raw-bf16", "b" * 64)
    assert check_mac(data, c, mac_key("s")) is False
    assert _header(data) is None or isinstance(_header(data), dict)
