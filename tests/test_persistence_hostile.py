"""Hostile model files and safe saves.

Every hostile file is built here, small: a schema whose back-references make
skops' type audit exponential, allowed types with absurd sizes, a zip bomb
under the total cap, pickles skops would not recognise, and saves killed
half-way.  Each is refused (or cleaned up) from bounds checked before any
audit or inflation, and the refusal names the file.
"""

import errno
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest
import skops.io as sio
from numpy.testing import assert_array_equal

import skdigits.data._atomic as atomic
from conftest import write_kaggle_csv
from hardening_support import SideEffect
from skdigits import NumpyCNNClassifier, NumpyMLPClassifier, cli, persistence
from skdigits.data import atomic_write
from skdigits.persistence import load_model, save_model

posix_only = pytest.mark.skipif(os.name != "posix", reason="needs POSIX flock and SIGKILL")


# ------------------------------------------------------------------ builders
def _node(cls, module, loader, **fields):
    return {"__class__": cls, "__module__": module, "__loader__": loader, **fields}


PROTOCOL = json.loads(zipfile.ZipFile(io.BytesIO(sio.dumps(1))).read("schema.json"))["protocol"]


def _int_node(value, obj_id):
    return _node("int", "builtins", "JsonNode", content=str(value), is_json=True, __id__=obj_id)


def _zip(schema, members=()):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("schema.json", json.dumps({**schema, "protocol": PROTOCOL}))
        for name, content in members:
            z.writestr(name, content)
    return buffer.getvalue()


def _doubling_schema(depth):
    """Lists nested `depth` deep, each holding the previous level in full and
    as a back-reference ``{"__id__": ...}``: a few hundred bytes per level,
    and twice the audit's work per level."""
    state = _int_node(1, 1)
    for level in range(1, depth + 1):
        state = _node("list", "builtins", "ListNode", __id__=level + 1,
                      content=[state, {"__id__": level}])
    return state


def _schema(data):
    return json.loads(zipfile.ZipFile(io.BytesIO(data)).read("schema.json"))


def _repack(data, schema=None, replace=None, deflate=()):
    """The skops file `data` with its schema and some members replaced."""
    replace = replace or {}
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(buffer, "w") as dst:
        for info in src.infolist():
            content = replace.get(info.filename, src.read(info.filename))
            if info.filename == "schema.json" and schema is not None:
                content = json.dumps(schema)
            method = zipfile.ZIP_DEFLATED if info.filename in deflate else zipfile.ZIP_STORED
            dst.writestr(info.filename, content, compress_type=method)
    return buffer.getvalue()


def _states(value, cls):
    """Every JSON object of the schema describing an object of class `cls`."""
    stack, found = [value], []
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            if value.get("__class__") == cls:
                found.append(value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return found


def _attributes(schema, cls, index=0):
    """The attribute dict (DictNode content) of the `index`-th `cls` object."""
    return sorted(_states(schema, cls), key=lambda s: s["__id__"])[index]["content"]["content"]


def _tuple_node(values, first_id):
    return _node("tuple", "builtins", "TupleNode", __id__=first_id,
                 content=[_int_node(v, first_id + 1 + i) for i, v in enumerate(values)])


FRESH_ID = 10**6  # far from the ids skops writes (memory addresses)


def _npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def mlp_file(digits):
    """A fitted MLP with dropout, as save_model writes it, and its input rows."""
    X, y = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = NumpyMLPClassifier((16,), max_iter=3, dropout=0.2, random_state=0)
        clf.fit(X[:300], y[:300])
    return sio.dumps(clf), X[:20], clf.predict_proba(X[:20])


def _write(tmp_path, data, name="model.skops"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _refused(path, *keywords):
    """load_model(path) raises a ValueError naming the file and `keywords`."""
    with pytest.raises(ValueError) as info:
        load_model(path)
    message = str(info.value)
    assert str(path) in message
    reason = message.replace(str(path), "")  # the test's folder is named after the test
    for keyword in keywords:
        assert keyword in reason, message
    return message


def _count_calls(monkeypatch, module, name, calls):
    """Record in `calls` each call of ``module.name``, which still runs."""
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)


@pytest.fixture
def no_skops_scan(monkeypatch):
    """Fail the test if skops builds or audits the tree at all."""
    def scan(*args, **kwargs):
        raise AssertionError("skops read the schema: the bounds were not checked first")
    monkeypatch.setattr(sio, "loads", scan)
    monkeypatch.setattr(sio, "get_untrusted_types", scan)


# ------------------------------------------- 1. exponential back-references
def test_doubling_back_references_are_refused_before_any_scan(tmp_path, no_skops_scan):
    """Depth 26: 2**27 node visits per audit, about eight minutes each before
    this check (and load_model audited twice); refused from the schema alone."""
    path = _write(tmp_path, _zip(_doubling_schema(26)))
    assert path.stat().st_size < 5_000
    _refused(path, "refusing to load", f"{persistence.MAX_SCHEMA_NODES:,} node visits")


def test_the_cli_refuses_it_too(tmp_path, capsys, no_skops_scan):
    model = _write(tmp_path, _zip(_doubling_schema(26)))
    data = write_kaggle_csv(tmp_path / "train.csv", np.zeros((2, 784)), [0, 1])
    assert cli.main(["evaluate", str(data), "-m", str(model)]) == 1
    err = capsys.readouterr().err
    assert str(model) in err and "node visits" in err and "Traceback" not in err


def test_shared_references_within_the_bound_still_load(tmp_path):
    """Back-references are legitimate (skops writes shared objects twice);
    only their expanded cost is bounded."""
    loaded = load_model(_write(tmp_path, _zip(_doubling_schema(8))))
    depth = 0
    while isinstance(loaded, list):
        assert loaded[0] == loaded[1]
        loaded, depth = loaded[0], depth + 1
    assert (depth, loaded) == (8, 1)


def test_a_reference_cycle_is_refused(tmp_path, no_skops_scan):
    cycle = _node("list", "builtins", "ListNode", __id__=5,
                  content=[_int_node(1, 6), {"__id__": 5}])
    _refused(_write(tmp_path, _zip(cycle)), "cycle")


def test_nesting_beyond_the_depth_bound_is_refused(tmp_path, no_skops_scan):
    state = _int_node(1, 1)
    for _ in range(persistence.MAX_SCHEMA_DEPTH // 2 + 1):
        state = _node("list", "builtins", "ListNode", content=[state])
    _refused(_write(tmp_path, _zip(state)), f"deeper than {persistence.MAX_SCHEMA_DEPTH}")


def test_a_legitimate_load_audits_once(tmp_path, monkeypatch, mlp_file):
    data, X, proba = mlp_file
    calls = []
    for name in ("loads", "get_untrusted_types"):
        _count_calls(monkeypatch, sio, name, calls)
    model = load_model(_write(tmp_path, data))
    assert calls == ["loads"]
    assert_array_equal(model.predict_proba(X), proba)


# ------------------------------------------------- 2. allowed types, absurd sizes
def _lie_input_shape(schema, n):
    _attributes(schema, "Network")["input_shape"] = _tuple_node((n,), FRESH_ID)


def _lie_hidden_units(schema, n):
    _attributes(schema, "Dense", 0)["units"] = _int_node(n, FRESH_ID)  # a Dropout follows it


def _lie_layout_size(schema, n):
    layout = _attributes(schema, "Network")["_layout"]["content"]
    first = layout[0]["content"]
    first[4] = _int_node(n, FRESH_ID)  # size of the first block


@pytest.mark.parametrize("lie", [_lie_input_shape, _lie_hidden_units, _lie_layout_size])
def test_absurd_sizes_are_refused_before_allocating(tmp_path, mlp_file, lie):
    """Ten million inputs would make 160 MB of dropout salts; the sizes are
    checked against the 1-D parameter array first, allocating nothing."""
    data, _, _ = mlp_file
    schema = _schema(data)
    lie(schema, 10_000_000)
    path = _write(tmp_path, _repack(data, schema))
    tracemalloc.start()
    try:
        _refused(path, "saved network")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * 2**20, f"{peak:,} bytes allocated while refusing"


def test_pooling_that_discards_a_huge_input_is_refused(tmp_path, digits):
    """A CNN whose pool window and stride grow with a lying input shape keeps
    every array's shape consistent; the salt budget per parameter refuses it."""
    X, y = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # A 5x5 kernel keeps the pool a layer of its own (3x3 ones are fused).
        cnn = NumpyCNNClassifier(conv_filters=(2,), kernel_size=5, hidden_layer_sizes=(8,),
                                 conv_dropout=0.2, max_iter=2,
                                 random_state=0).fit(X[:200], y[:200])
    data = sio.dumps(cnn)
    schema = _schema(data)
    k = 200  # 8x8 -> 1600x1600 pixels, pooled 400x400: still 4x4 windows
    _attributes(schema, "Network")["input_shape"] = _tuple_node((8 * k, 8 * k, 1), FRESH_ID)
    pool = _attributes(schema, "MaxPool2D")
    pool["pool_size"] = _tuple_node((2 * k, 2 * k), FRESH_ID + 10)
    pool["stride"] = _tuple_node((2 * k, 2 * k), FRESH_ID + 20)
    _refused(_write(tmp_path, _repack(data, schema)), "saved network", "values per sample")


# ---------------------------------------------------------- 3. zip bombs
def _params_member(data):
    return _attributes(_schema(data), "Network")["params"]["file"]


def test_a_member_inflating_far_beyond_its_size_is_refused(tmp_path, mlp_file):
    """16 MiB of zeros deflate ~1000:1 (the issue's 1.9 GB in 1.85 MB, scaled
    down): refused from the zip directory, nothing inflated."""
    data, _, _ = mlp_file
    member = _params_member(data)
    bomb = _repack(data, replace={member: _npy(np.zeros(4 * 2**20, dtype=np.float32))},
                   deflate={member})
    path = _write(tmp_path, bomb)
    assert path.stat().st_size < 200_000
    tracemalloc.start()
    try:
        _refused(path, "zip bomb", f"limit {persistence.MAX_COMPRESSION_RATIO}:1", member)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"{peak:,} bytes allocated while refusing"


def test_a_member_longer_than_its_npy_header_states_is_refused(tmp_path, mlp_file):
    data, _, _ = mlp_file
    member = _params_member(data)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        padded = z.read(member) + bytes(2**20)
    _refused(_write(tmp_path, _repack(data, replace={member: padded})),
             member, "header states", "float")


def test_a_member_read_by_several_objects_is_refused(tmp_path, mlp_file):
    """Each NdArrayNode naming a member inflates it again: the same 1 MB
    member named a thousand times would cost a gigabyte."""
    data, _, _ = mlp_file
    schema = _schema(data)
    member = _attributes(schema, "Network")["params"]["file"]
    moment = _attributes(schema, "Adam")["m"]
    moment["file"], moment["__id__"] = member, FRESH_ID
    _refused(_write(tmp_path, _repack(data, schema)), member, "several objects")


def test_a_second_schema_inflating_beyond_the_cap_is_refused(tmp_path, mlp_file):
    """zipfile reads the last of two members with one name: a small first
    schema.json must not vouch for a 32 MB second one."""
    data, _, _ = mlp_file
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        schema = z.read("schema.json")
    buffer = io.BytesIO(data)
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(buffer, "a") as z:
        z.writestr(zipfile.ZipInfo("schema.json"), b" " * (32 << 20) + schema,
                   compress_type=zipfile.ZIP_DEFLATED)
    path = _write(tmp_path, buffer.getvalue())
    assert path.stat().st_size < 200_000
    _refused(path, "schema.json would inflate to", f"limit {persistence.MAX_SCHEMA_BYTES:,}")


def test_deflated_model_files_still_load(tmp_path, mlp_file):
    data, X, proba = mlp_file
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = {info.filename for info in z.infolist()}
    model = load_model(_write(tmp_path, _repack(data, deflate=names)))
    assert_array_equal(model.predict_proba(X), proba)


# ------------------------------------------ 4. pickles skops does not recognise
@pytest.mark.parametrize("protocol", [0, 1])
def test_old_protocol_pickles_are_named_as_pickles(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = _write(tmp_path, pickle.dumps(SideEffect(marker), protocol=protocol))
    _refused(path, "looks like a pickle or joblib file")
    assert not marker.exists()


@pytest.mark.parametrize("method", ["zlib", "gzip", "bz2", "lzma", "xz"])
def test_compressed_joblib_files_are_named_as_such(tmp_path, method):
    joblib = pytest.importorskip("joblib")
    marker = tmp_path / "pwned"
    path = tmp_path / "model.joblib"
    joblib.dump({"model": SideEffect(marker), "weights": np.arange(5000.0)}, path,
                compress=(method, 3))
    _refused(path, f"looks like a pickle or joblib file ({method}-compressed)")
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    (b"label,pixel0\n1,0\n", "not a skops model file (a skops file is a zip archive)"),
    (b"N", "not a skops model file (a skops file"),  # an opcode, but no pickle
    (b"lab" * 30_000, "not a skops model file (a skops file"),  # opcodes, then not
    (__import__("gzip").compress(b"label,pixel0\n1,0\n"), "gzip-compressed data"),
], ids=["csv", "one-opcode", "opcodes-without-a-stack", "gzipped-csv"])
def test_other_files_are_not_called_pickles(tmp_path, content, message):
    _refused(_write(tmp_path, content), message)


# ------------------------------------------------------------ 8. safe saves
def _temp_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _age(path, seconds=3600):
    old = time.time() - seconds
    os.utime(path, (old, old))


_KILLED_WRITER = """
import importlib.util, os, signal, sys
spec = importlib.util.spec_from_file_location("_atomic", sys.argv[1])
atomic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(atomic)
with atomic.atomic_write(sys.argv[2], "wb") as f:
    f.write(b"half a model")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


@posix_only
def test_a_killed_writers_temp_file_goes_at_the_next_save(tmp_path, mlp_file):
    target = tmp_path / "model.skops"
    target.write_bytes(b"the old model")
    done = subprocess.run([sys.executable, "-c", _KILLED_WRITER, atomic.__file__, str(target)],
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr
    (leftover,) = _temp_files(tmp_path)
    assert target.read_bytes() == b"the old model"
    _age(tmp_path / leftover)
    model = sio.loads(mlp_file[0], trusted=persistence.trusted_types())
    save_model(model, target)
    assert _temp_files(tmp_path) == []
    assert load_model(target).predict(mlp_file[1]).shape == (20,)


@posix_only
def test_only_stale_temp_files_of_ours_are_removed(tmp_path):
    target = tmp_path / "out.csv"
    ours = ".out.csv.0123456789ab.tmp"
    kept = [".out.csv.0123456789ab.tmp.bak", ".out.csv.0123456789.tmp",
            ".out.csv.0123456789abc.tmp", ".out.csv.0123456789AB.tmp", ".other.0123456789ab.tmp",
            "out.csv.0123456789ab.tmp", ".out.csv.fedcba987654.tmp"]
    for name in [ours] + kept:
        (tmp_path / name).write_bytes(b"x")
        if name != ".out.csv.fedcba987654.tmp":  # that one is recent: maybe a writer's
            _age(tmp_path / name)
    (tmp_path / ".out.csv.aaaaaaaaaaaa.tmp").mkdir()
    os.symlink(tmp_path / "out.csv.0123456789ab.tmp", tmp_path / ".out.csv.bbbbbbbbbbbb.tmp")
    with atomic_write(target) as f:
        f.write("new")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert ours not in left
    assert set(kept) | {".out.csv.aaaaaaaaaaaa.tmp", ".out.csv.bbbbbbbbbbbb.tmp"} <= set(left)


@posix_only
def test_a_concurrent_save_keeps_the_other_writers_temp_file(tmp_path):
    """Two saves of one target: the second one's clean-up sees the first
    one's temporary file (even old) locked, and leaves it."""
    target = tmp_path / "model.skops"
    with atomic_write(target, "wb") as first:
        first.write(b"first")
        (theirs,) = _temp_files(tmp_path)
        _age(tmp_path / theirs)
        with atomic_write(target, "wb") as second:
            second.write(b"second")
        assert target.read_bytes() == b"second"
        assert _temp_files(tmp_path) == [theirs]
    assert target.read_bytes() == b"first"
    assert _temp_files(tmp_path) == []


def test_a_failed_save_names_the_target_and_fails_before_serialising(tmp_path, monkeypatch,
                                                                     mlp_file):
    model = sio.loads(mlp_file[0], trusted=persistence.trusted_types())
    serialised = []
    _count_calls(monkeypatch, sio, "dumps", serialised)
    target = tmp_path / "missing" / "model.skops"
    with pytest.raises(FileNotFoundError) as info:
        save_model(model, target)
    assert info.value.filename == str(target) and ".tmp" not in str(info.value)
    with pytest.raises(ValueError, match="empty path"):
        save_model(model, "")
    with pytest.raises(IsADirectoryError) as info:
        save_model(model, tmp_path)
    assert info.value.filename == str(tmp_path)
    with pytest.raises(IsADirectoryError):
        save_model(model, f"{tmp_path / 'new'}{os.sep}")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        save_model(model, tmp_path / "file" / "model.skops")
    assert serialised == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_write_error_names_the_target(tmp_path, monkeypatch):
    target = tmp_path / "model.skops"
    target.write_bytes(b"old")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError) as info, atomic_write(target, "wb") as f:
        f.write(b"new")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert target.read_bytes() == b"old" and _temp_files(tmp_path) == []


def test_save_refuses_a_file_load_would_refuse(tmp_path, monkeypatch, mlp_file):
    model = sio.loads(mlp_file[0], trusted=persistence.trusted_types())
    monkeypatch.setattr(persistence, "MAX_SCHEMA_NODES", 50)
    with pytest.raises(ValueError, match="load_model would refuse the file .*node visits"):
        save_model(model, tmp_path / "model.skops")
    assert list(tmp_path.iterdir()) == []
