"""Safe model files: skops archives loaded against a fixed allow-list of types.

A pickle (or a joblib file, which is a pickle) runs whatever code its author
chose the moment it is loaded.  Models are therefore saved with
:mod:`skops.io`, a zip archive of JSON and ``.npy`` arrays from which objects
are rebuilt by setting their attributes, and :func:`load_model` only rebuilds
types from :func:`trusted_types`: this package's estimators, layers,
optimizers and preprocessing, plus what skops already trusts (scikit-learn's
estimators such as ``Pipeline`` and ``LabelBinarizer``, builtins, NumPy
arrays and random generators).  A file naming any other type is refused
before anything in it is imported or constructed.

Threat model
------------
A model file comes from anyone.  Beyond naming a dangerous type, a hostile
file can try to make loading hang or exhaust memory with types that are all
allowed.  So :func:`load_model` reads the zip directory, the schema and the
``.npy`` headers first, and refuses, before skops inflates an array or
checks a type:

- anything but a zip archive, after a look at its first
  ``_SNIFF_BYTES`` bytes: pickles of any protocol and joblib files (plain,
  or zlib, gzip, bz2, xz or lzma compressed) are named as such;
- a ``schema.json`` inflating to more than :data:`MAX_SCHEMA_BYTES`, nested
  deeper than :data:`MAX_SCHEMA_DEPTH`, or costing skops' type audit more
  than :data:`MAX_SCHEMA_NODES` node visits.  skops builds one node per object
  id and re-walks it at every later reference to that id, so a few
  kilobytes of back-references can double the audit's work per level; the
  count therefore expands every reference into what it stands for, and a
  cycle of references is refused;
- a member the schema names that more than one object would read (each
  reads it again), an array member that would not inflate to exactly what
  its ``.npy`` header states (shape times item size) or that holds Python
  objects, and members that together inflate more than
  :data:`MAX_COMPRESSION_RATIO` times their compressed size (beyond the first
  :data:`RATIO_FREE_BYTES`) or beyond :data:`MAX_UNCOMPRESSED_BYTES`.

Loading then runs skops' type audit once, and while the objects are rebuilt
:class:`~skdigits.nn.network.Network` checks its input shape and layer sizes
against its own parameter array before allocating anything they size.  A
hostile file thus costs time and memory in proportion to its own size.
:func:`save_model` applies the same checks to what it writes, so that every
file it saves loads.

Example
-------
>>> import tempfile, pathlib
>>> from sklearn.datasets import load_digits
>>> from skdigits import NumpyMLPClassifier
>>> from skdigits.persistence import load_model, save_model
>>> X, y = load_digits(return_X_y=True)
>>> clf = NumpyMLPClassifier((16,), solver="lbfgs", max_iter=500, random_state=0).fit(X / 16, y)
>>> path = save_model(clf, pathlib.Path(tempfile.mkdtemp()) / "digits.skops")
>>> bool((load_model(path).predict_proba(X / 16) == clf.predict_proba(X / 16)).all())
True
"""

import bz2
import io
import json
import lzma
import math
import os
import pickletools
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

__all__ = ["load_model", "save_model", "trusted_types"]

#: First bytes of a zip archive, which every skops file is.
_ZIP_MAGIC = b"PK\x03\x04"
#: A pickle of protocol 2 or higher (joblib's uncompressed files too) starts
#: with the PROTO opcode and the protocol number.
_PICKLE_PROTO = tuple(bytes([0x80, protocol]) for protocol in range(2, 6))
#: How a compressed joblib file starts, per compressor joblib offers from the
#: standard library (zlib, its default, has four header variants).
_COMPRESSED_STARTS = (
    ("zlib", (b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda")),
    ("gzip", (b"\x1f\x8b",)),
    ("bz2", (b"BZh",)),
    ("xz", (b"\xfd7zXZ\x00",)),
    ("lzma", (b"\x5d\x00\x00",)),  # the legacy .lzma header joblib's 'lzma' writes
)
#: Bytes of a non-zip file examined (and at most inflated) to tell a pickle:
#: the opening opcodes of any pickle fit, and the look costs the same
#: whatever the file.
_SNIFF_BYTES = 64 * 2**10

#: A real model's schema.json is tens of kilobytes; a larger one is refused
#: before it is inflated (a 33 kB file can hold a 32 MB schema).
MAX_SCHEMA_BYTES = 16 * 2**20
#: JSON nesting of schema.json.  A Pipeline around an MLP with dropout nests
#: 22 levels deep; skops reads the schema recursively, so much deeper input
#: would end in a RecursionError rather than a clear refusal.
MAX_SCHEMA_DEPTH = 100
#: Node visits (JSON objects and lists, shared ones counted at every
#: reference) of skops' type audit.  A schema of MAX_SCHEMA_BYTES written by
#: skops holds about 60,000 of them (a model with a 2,000-epoch history has
#: 10,000); at a few microseconds a visit this bounds the audit to about a
#: second.
MAX_SCHEMA_NODES = 200_000
#: Cap on the total inflated size of a model file's members.
MAX_UNCOMPRESSED_BYTES = 2 * 2**30
#: Inflated over compressed bytes of the members the schema names.  Weights
#: deflate to about 1.1:1; deflate cannot exceed about 1030:1, which only
#: runs of equal bytes reach (1.9 GB of zeros in a 1.85 MB file).
MAX_COMPRESSION_RATIO = 100
#: Inflated bytes exempt from MAX_COMPRESSION_RATIO: a small model may hold
#: arrays of zeros, and inflating a few megabytes costs nothing.
RATIO_FREE_BYTES = 4 * 2**20
#: Largest .npy header read; numpy's own default limit for np.load.
_MAX_NPY_HEADER_BYTES = 10_000

# numpy dtypes are stored by skops as an empty .npy array (no pickle) and
# rebuilt from it; skops lists them as untrusted only because it has no
# default for them.
_NUMPY_TYPES = ("numpy.dtype",)


def _type_name(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def trusted_types():
    """The types :func:`load_model` rebuilds beyond skops' own defaults.

    Returns
    -------
    names : list of str
        Sorted fully qualified type names: the estimators, the engine's
        network, layers and optimizers, the training history, the image
        preprocessing, and ``numpy.dtype``.
    """
    from .cnn import NumpyCNNClassifier
    from .augmentation import Augmentation
    from .data.images import ImageTransformer
    from .mlp import NumpyMLPClassifier, NumpyMLPRegressor
    from .nn.conv import Conv2D, ConvReLUPool2D, Flatten, MaxPool2D
    from .nn.layers import Activation, Dense, Dropout
    from .nn.network import Network
    from .nn.normalization import BatchNorm
    from .nn.optimizers import SGD, Adam
    from .training import TrainingHistory

    classes = [NumpyMLPClassifier, NumpyMLPRegressor, NumpyCNNClassifier, Network, Dense,
               Dropout, Conv2D, MaxPool2D, Flatten, BatchNorm, Activation, Adam, SGD,
               TrainingHistory, ImageTransformer, Augmentation, ConvReLUPool2D]
    return sorted({_type_name(cls) for cls in classes} | set(_NUMPY_TYPES))


def save_model(estimator, path):
    """Save a fitted estimator or pipeline to a skops file, atomically.

    The file appears at `path` complete or not at all (it is written to a
    temporary file in the same folder and moved into place).

    Parameters
    ----------
    estimator : estimator or Pipeline
        Typically a fitted ``Pipeline`` ending in a skdigits classifier.
    path : str or path-like
        Destination; ``.skops`` is the customary ending.  Its folder must exist.

    Returns
    -------
    path : pathlib.Path

    Raises
    ------
    ValueError
        If `path` is empty, or the estimator holds a type (or makes a file)
        that :func:`load_model` would refuse; nothing is written then.
    IsADirectoryError, FileNotFoundError, NotADirectoryError
        If `path` is a folder or its folder does not exist, before anything
        is serialised.
    OSError
        If writing fails; the error names `path`, which is left as it was.
    """
    import skops.io as sio

    from .data._atomic import atomic_write, check_target

    target = check_target(path)
    data = sio.dumps(estimator)
    unknown = sorted(set(sio.get_untrusted_types(data=data)) - set(trusted_types()))
    if unknown:
        raise ValueError(
            f"cannot save {target}: the model holds type(s) that load_model would "
            f"refuse: {', '.join(unknown)}"
        )
    try:
        _check_model_bytes(data)
    except ValueError as exc:
        raise ValueError(f"cannot save {target}: load_model would refuse the file ({exc})") \
            from None
    with atomic_write(target, "wb") as f:
        f.write(data)
    return Path(path)


# ----------------------------------------------------------------- not a zip
class _Discard:
    """A text sink for pickletools.dis, which must print what it checks."""

    def write(self, text):
        return len(text)


def _looks_like_pickle(head, truncated):
    """Whether `head`, the start of a file, reads as a pickle.

    True for a whole pickle and, when the file goes on past `head`
    (`truncated`), for a valid one cut off at its end.
    ``pickletools.dis`` parses the opcodes and tracks the stack and memo they
    would build, without importing or running anything.
    """
    if head.startswith(_PICKLE_PROTO):
        # Protocols 2+ announce themselves; joblib then writes raw array
        # bytes between opcodes, which dis could not parse.
        return True
    if not head:
        return False
    stream = io.BytesIO(head)
    try:
        with warnings.catch_warnings():
            # Decoding a garbled string argument warns about its escapes.
            warnings.simplefilter("ignore", DeprecationWarning)
            pickletools.dis(stream, out=_Discard())
    except Exception:  # noqa: BLE001 - any bad opcode, argument or stack means "not a pickle"
        # ... unless it is only the cut at the end of `head`.
        return truncated and stream.tell() == len(head)
    return True


def _inflate_start(kind, head):
    """The first bytes `head` inflates to as `kind`, and whether they are all
    of it; (None, False) if `head` is not such a stream."""
    decompressor = {
        "zlib": zlib.decompressobj,
        "gzip": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS),
        "bz2": bz2.BZ2Decompressor,
        "xz": lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ),
        "lzma": lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE),
    }[kind]()
    try:
        inner = decompressor.decompress(head, _SNIFF_BYTES)  # bounded output
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError):
        return None, False
    return inner, decompressor.eof


def _refuse_non_skops(where, data):
    head = data[:_SNIFF_BYTES]
    kind = None
    if _looks_like_pickle(head, truncated=len(data) > len(head)):
        kind = ""
    for name, starts in _COMPRESSED_STARTS:
        if kind is None and head.startswith(starts):
            inner, whole = _inflate_start(name, head)
            if inner is not None and _looks_like_pickle(inner, truncated=not whole):
                kind = f" ({name}-compressed)"
            elif inner is not None:
                raise ValueError(f"{where}: not a skops model file (it is {name}-compressed "
                                 "data; a skops file is a zip archive)")
    if kind is not None:
        raise ValueError(
            f"{where}: this looks like a pickle or joblib file{kind}; it was not loaded because "
            "loading a pickle can run arbitrary code. Re-save the model with "
            "skdigits.save_model (a .skops file) from a trusted session."
        )
    raise ValueError(f"{where}: not a skops model file (a skops file is a zip archive)")


# ----------------------------------------------------- zip directory, schema
def _unreadable(exc):
    return ValueError(f"not a readable skops model file ({type(exc).__name__}: {exc})")


def _open_archive(data):
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - BadZipFile, or what a damaged directory trips
        raise _unreadable(exc) from exc


def _check_archive_sizes(archive):
    """Refuse zip bombs from the sizes in the zip directory, before inflating."""
    members = archive.infolist()
    # Every entry so named: zipfile reads the last of duplicates, not the first.
    schema = max((m.file_size for m in members if m.filename == "schema.json"), default=0)
    if schema > MAX_SCHEMA_BYTES:
        raise ValueError(f"refusing to load: its schema.json would inflate to "
                         f"{schema:,} bytes (limit {MAX_SCHEMA_BYTES:,}); not a model "
                         "file written by skdigits")
    total = sum(m.file_size for m in members)
    if total > MAX_UNCOMPRESSED_BYTES:
        raise ValueError(f"refusing to load: its members would inflate to "
                         f"{total:,} bytes (limit {MAX_UNCOMPRESSED_BYTES:,})")


def _too_deep():
    return ValueError(f"refusing to load: its schema.json nests deeper than "
                      f"{MAX_SCHEMA_DEPTH} levels; not a model file written by skdigits")


def _too_many_nodes():
    return ValueError(
        f"refusing to load: checking its schema.json would take more than "
        f"{MAX_SCHEMA_NODES:,} node visits (object ids referenced again and again, "
        "each reference re-walked); not a model file written by skdigits")


def _read_schema(archive):
    try:
        schema = json.loads(archive.read("schema.json"))
    except RecursionError:
        raise _too_deep() from None
    except Exception as exc:  # noqa: BLE001 - zipfile, zlib, json and unicode errors alike
        raise _unreadable(exc) from exc
    if not isinstance(schema, dict):
        raise ValueError(f"not a readable skops model file (its schema.json holds a "
                         f"{type(schema).__name__}, not an object)")
    return schema


#: What json.loads makes that can hold more JSON: the only things walked.
_CONTAINERS = (dict, list)


def _object_id(value):
    """The ``__id__`` of a JSON object if skops memoizes by it, else None.

    skops shares a node only for a true, hashable id (``if saved_id``); a
    false one makes a new node, re-reading its member, at every occurrence.
    """
    obj_id = value.get("__id__")
    return obj_id if obj_id and not isinstance(obj_id, (dict, list)) else None


def _index_schema(schema):
    """One iterative pass over the parsed schema, bounding its depth and size.

    Returns ``(occurrences, readers)``: the JSON objects carrying each object
    id, and for each member file the objects that name it.
    """
    occurrences, readers = {}, {}
    containers, stack = 0, [(schema, 1)]
    while stack:
        value, depth = stack.pop()
        containers += 1
        if depth > MAX_SCHEMA_DEPTH:
            raise _too_deep()
        if containers > MAX_SCHEMA_NODES:
            raise _too_many_nodes()
        if type(value) is dict:
            children = value.values()
            obj_id = _object_id(value)
            if obj_id is not None:
                occurrences.setdefault(obj_id, []).append(value)
            if isinstance(value.get("file"), str) and "__loader__" in value:
                readers.setdefault(value["file"], []).append(value)
        else:
            children = value
        stack.extend([(child, depth + 1) for child in children if type(child) in _CONTAINERS])
    return occurrences, readers


def _check_audit_cost(schema, occurrences):
    """Refuse a schema whose type audit would visit too many nodes.

    skops returns the node it built for an object id for every later JSON
    object with that id, and its audit walks the node again each time: the
    audit costs what the schema would with every reference expanded.  An id
    is expanded as its largest occurrence, an upper bound whichever one skops
    meets first; each occurrence is costed once, so this is linear.
    """
    expanded, open_ids = {}, set()

    def cost(value, depth):
        """(visits, height) of the JSON object or list `value` expanded,
        `depth` levels down."""
        if depth > MAX_SCHEMA_DEPTH:
            raise _too_deep()
        if type(value) is dict:
            obj_id = _object_id(value)
            return shared(obj_id, depth) if obj_id is not None else own(value.values(), depth)
        return own(value, depth)

    def own(children, depth):
        visits, height = 1, 1
        for child in children:
            if type(child) not in _CONTAINERS:
                continue  # a number or a string: no node of its own
            child_visits, child_height = cost(child, depth + 1)
            visits, height = visits + child_visits, max(height, child_height + 1)
            if visits > MAX_SCHEMA_NODES:
                raise _too_many_nodes()
        return visits, height

    def shared(obj_id, depth):
        if obj_id in open_ids:
            raise ValueError(f"refusing to load: its schema.json refers to object id "
                             f"{obj_id!r} inside that object itself (a cycle)")
        if obj_id not in expanded:
            open_ids.add(obj_id)
            costs = [own(occurrence.values(), depth) for occurrence in occurrences[obj_id]]
            open_ids.discard(obj_id)
            expanded[obj_id] = (max(v for v, _ in costs), max(h for _, h in costs))
        visits, height = expanded[obj_id]
        if depth + height - 1 > MAX_SCHEMA_DEPTH:
            raise _too_deep()
        return visits, height

    cost(schema, 1)


# ------------------------------------------------------------------- members
def _npy_header(archive, info):
    """(shape, dtype, header bytes) of an .npy member, inflating only its header."""
    try:
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                read_header = np.lib.format.read_array_header_1_0
            elif version == (2, 0):
                read_header = np.lib.format.read_array_header_2_0
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            shape, _, dtype = read_header(member, max_header_size=_MAX_NPY_HEADER_BYTES)
            return shape, dtype, member.tell()
    except Exception as exc:  # noqa: BLE001 - zipfile, zlib and numpy errors alike
        raise ValueError(f"refusing to load: its member {info.filename!r} is not a readable "
                         f".npy array ({type(exc).__name__}: {exc})") from exc


def _check_array_member(archive, info):
    shape, dtype, header_bytes = _npy_header(archive, info)
    if dtype.hasobject:
        raise ValueError(f"refusing to load: its member {info.filename!r} holds Python "
                         "objects (a pickle inside the array)")
    expected = header_bytes + math.prod(shape) * dtype.itemsize
    if info.file_size != expected:
        raise ValueError(
            f"refusing to load: its member {info.filename!r} would inflate to "
            f"{info.file_size:,} bytes, but its .npy header states a {dtype} array of shape "
            f"{shape}: {expected:,} bytes with the header")


def _check_members(archive, readers):
    """Refuse members that would inflate beyond what the arrays need.

    Only the members the schema names are ever inflated (by skops); each must
    be read by one object, and an array must inflate to exactly what its
    header states.  Together they must stay within the compression ratio.
    """
    inflated = compressed = 0
    worst = None
    for name, states in readers.items():
        ids = [_object_id(state) for state in states]
        if len({i for i in ids if i is not None}) + ids.count(None) > 1:
            raise ValueError(f"refusing to load: its member {name!r} is named by several "
                             "objects, each of which would inflate it again")
        try:
            info = archive.getinfo(name)
        except KeyError:
            raise ValueError(f"not a readable skops model file (its schema.json names a "
                             f"member {name!r} the archive lacks)") from None
        if any(state.get("__loader__") == "NdArrayNode" for state in states):
            _check_array_member(archive, info)
        inflated += info.file_size
        compressed += info.compress_size
        ratio = info.file_size / max(info.compress_size, 1)
        if worst is None or ratio > worst[0]:
            worst = (ratio, name)
    if inflated > MAX_COMPRESSION_RATIO * compressed + RATIO_FREE_BYTES:
        raise ValueError(
            f"refusing to load: its arrays would inflate to {inflated:,} bytes from "
            f"{compressed:,} ({inflated / max(compressed, 1):,.0f}:1, {worst[1]!r} alone "
            f"{worst[0]:,.0f}:1; limit {MAX_COMPRESSION_RATIO}:1 beyond the first "
            f"{RATIO_FREE_BYTES:,} bytes): a zip bomb, not a model file written by skdigits")


def _check_model_bytes(data):
    """Every check on a skops file that needs no object built; raises
    ValueError (without the file name) on the first one failing."""
    with _open_archive(data) as archive:
        _check_archive_sizes(archive)
        schema = _read_schema(archive)
        occurrences, readers = _index_schema(schema)
        _check_audit_cost(schema, occurrences)
        _check_members(archive, readers)


def load_model(path):
    """Load a model saved by :func:`save_model`, refusing anything unsafe.

    Only skops files are read.  Before any object is built, the types the
    file names are checked against :func:`trusted_types` (plus skops'
    defaults: scikit-learn estimators, builtins, NumPy arrays and random
    generators); pickles and joblib files are refused without being read
    further, and so are files exceeding the bounds in the module's threat
    model (schema size, nesting and audit cost, array sizes and compression).

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    estimator : the saved estimator or pipeline

    Raises
    ------
    FileNotFoundError, IsADirectoryError, PermissionError
        If `path` cannot be read.
    ValueError
        If the file is not a skops file (e.g. a pickle), is damaged, exceeds
        a bound, or names a type outside the allow-list; the message names
        the file (and the type(s)).
    """
    import skops.io as sio
    from skops.io.exceptions import UntrustedTypesFoundException

    where = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(_ZIP_MAGIC):
        _refuse_non_skops(where, data)
    try:
        _check_model_bytes(data)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc.__cause__
    allowed = trusted_types()
    try:
        # One type audit, skops' own, before anything is constructed.
        return sio.loads(data, trusted=allowed)
    except UntrustedTypesFoundException as exc:
        unknown = _untrusted_names(sio, data, allowed) or [str(exc)]
        raise ValueError(f"{where}: refusing to load type(s) outside skdigits' allow-list: "
                         f"{', '.join(unknown)}") from None
    except Exception as exc:  # noqa: BLE001 - only allowed types are built: a failure is damage
        # zipfile, zlib, json and skops report damaged input with many
        # exception types (an unsupported compression or encryption flag, a
        # schema of the wrong shape, an attribute a class rejects); all mean
        # the same thing to the user.
        raise ValueError(f"{where}: cannot rebuild the model ({type(exc).__name__}: {exc})") \
            from exc


def _untrusted_names(sio, data, allowed):
    """The types outside the allow-list, for the refusal message.  A second
    audit, on a file already refused; the bounds above keep it cheap."""
    try:
        return sorted(set(sio.get_untrusted_types(data=data)) - set(allowed))
    except Exception:  # noqa: BLE001 - the message then quotes skops' own
        return []
