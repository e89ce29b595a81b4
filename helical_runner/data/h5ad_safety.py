"""Refusing an uploaded .h5ad that reaches outside itself or declares more than it holds, before it is read.

An .h5ad is HDF5, and HDF5 can make a reader open other files: an external link (h5py.ExternalLink) opens
another file's object, a virtual dataset maps other files' datasets, and a dataset with external storage
keeps its bytes in any file the process can read (`/proc/self/environ`, with the runner's S3 keys, included).
A runner holds credentials and sees /data, so an upload must be self-contained. `check_h5ad` walks every
link without following any (HDF5's H5Lvisit lists soft and external links and does not traverse them, and
visits a group reached by a hard-link cycle once), plus every object an attribute's object reference
points at (anndata 0.7's categoricals are read through one), and refuses the first that reaches outside.

HDF5 metadata can also declare what the file cannot hold: a chunked dataset of 10^12 elements whose chunks
were never written (a read returns fill values, after allocating them all), a sparse X whose `shape`
attribute says 10^12 cells. A dataset may declare at most MAX_RATIO times its stored bytes plus
SLACK_BYTES, its stored bytes counted up to the file's size (a chunk index may lie about them): no
compression HDF5 ships comes close (gzip's best is about 1032:1, zlib.net/zlib_tech.html). A declared cell
count may be at most the file's size in bytes (every cell needs at least its name and its row pointer) and
the profile's `max_cells`.

Only metadata is read: link tables, object headers, attributes that are object references, the chunk
index of datasets over SLACK_BYTES, and the attributes that say how many cells there are.
"""

from __future__ import annotations

import math

import h5py
import numpy as np

from helical_runner.errors import InputError, size_text
from helical_runner.data.h5ad_layout import index_key

MAX_RATIO = 1100  # declared bytes per stored byte a dataset may claim (gzip: about 1032 at best)
SLACK_BYTES = 1 << 20  # declared bytes any dataset may have beyond that (small datasets are never judged)
MATRICES = ("X", "raw/X")  # with every layers/*: the matrices whose rows are cells
SELF_CONTAINED = "an upload must be self-contained (HDF5 links, virtual datasets and external storage " \
                 "that reach other files are refused)"


def check_h5ad(f: h5py.File, name: str, size: int, max_cells: int | None = None) -> None:
    """Raise InputError (exit 65), one line naming `name` (the upload's URL) and the HDF5 object, for the first
    of: an external or user-defined link, a virtual dataset, a dataset with external storage (each would
    make HDF5 read another file); a dataset declaring more than MAX_RATIO x its stored bytes (at most
    `size`) + SLACK_BYTES (chunks never written: reading it would allocate what the file never held); a
    declared cell count (obs's index, X's, raw/X's or a layer's rows, a sparse group's `shape` attribute)
    above `size`, the file's length in bytes (crafted or corrupt), or above `max_cells` (the profile's
    cap; None: no cap).

    `f` may be over a local path or a file object (s3_file.S3File). Soft links are not followed: they
    stay inside the file. Reads metadata only (see the module docstring). HDF5's own errors on a
    damaged file (OSError, KeyError, ValueError) propagate for the caller to report."""
    _Walk(f, name, size).group(f.id, "/")
    _check_cells(f, name, size, max_cells)


def _shown(text: bytes | str, limit: int = 120) -> str:
    """A name from the file for a one-line message: control characters escaped, long names cut."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    return text if len(text) <= limit else text[:limit] + "..."


class _Walk:
    """One pass over a file's links and the objects they (or attribute references) lead to, each seen once."""

    def __init__(self, f: h5py.File, name: str, size: int):
        self.fid, self.name, self.size = f.id, name, size
        self.seen: set = set()  # ObjectIDs: h5py compares them by file and address, as HDF5 does

    def refuse(self, where: str, what: str) -> InputError:
        return InputError(f"{self.name}: HDF5 object {where} {what}; {SELF_CONTAINED}")

    def group(self, gid, where: str) -> None:
        """The group's own attributes, then every link under it, however deep, none of them followed."""
        if not self.first_visit(gid):
            return
        self.attributes(gid, where)
        links: list[tuple[bytes, int]] = []
        gid.links.visit(lambda path, info: links.append((path, info.type)), info=True)  # None: keep going
        base = where.rstrip("/")
        for path, kind in links:
            at = f"{base}/{_shown(path, 400)}"
            if kind == h5py.h5l.TYPE_SOFT:
                continue  # a path inside this file: whatever it names is reached by a hard link too
            if kind == h5py.h5l.TYPE_EXTERNAL:
                target_file, target = gid.links.get_val(path)
                raise self.refuse(at, f"is an external link to {_shown(target_file)}:{_shown(target)}")
            if kind != h5py.h5l.TYPE_HARD:
                raise self.refuse(at, f"is a user-defined link (type {kind}), which may open other files")
            self.object(h5py.h5o.open(gid, path), at)

    def object(self, oid, where: str) -> None:
        if isinstance(oid, h5py.h5g.GroupID):
            return self.group(oid, where)  # reached through a reference: its links have not been walked
        if not self.first_visit(oid):
            return
        if isinstance(oid, h5py.h5d.DatasetID):
            self.dataset(oid, where)
        self.attributes(oid, where)

    def first_visit(self, oid) -> bool:
        # not h5o.get_info: it asks HDF5 for every field, meta_size included, which reads a chunked
        # dataset's whole chunk index (most of a file read from S3 by 4 MiB blocks)
        if oid in self.seen:
            return False
        self.seen.add(oid)
        return True

    def dataset(self, did, where: str) -> None:
        dcpl = did.get_create_plist()
        if dcpl.get_layout() == h5py.h5d.VIRTUAL:
            sources = sorted({_shown(dcpl.get_virtual_filename(i)) for i in range(dcpl.get_virtual_count())})
            raise self.refuse(where, f"is a virtual dataset mapping {', '.join(sources) or 'nothing'}")
        if dcpl.get_external_count():
            files = sorted({_shown(dcpl.get_external(i)[0]) for i in range(dcpl.get_external_count())})
            raise self.refuse(where, f"keeps its data in external file(s) {', '.join(files)}")
        space = did.get_space()
        elements = 0 if space.get_simple_extent_type() == h5py.h5s.NULL else space.get_simple_extent_npoints()
        dtype = did.get_type()
        variable = dtype.get_class() == h5py.h5t.VLEN or \
            (dtype.get_class() == h5py.h5t.STRING and dtype.is_variable_str())
        declared = elements * (1 if variable else dtype.get_size())  # a variable-length value: at least 1 byte
        if declared <= SLACK_BYTES:
            return  # never judged: reading the chunk index of every small dataset would cost S3 requests
        needed = -(-(declared - SLACK_BYTES) // MAX_RATIO)  # the stored bytes that make `declared` possible
        stored = min(self.size, _stored_bytes(did, dcpl, needed))  # a chunk index may lie; the file's size not
        if stored < needed:
            raise InputError(f"{self.name}: HDF5 dataset {where} declares {elements:,} elements "
                             f"({size_text(declared)}) but stores {size_text(stored)}, more than any compression "
                             f"gives (at most {MAX_RATIO}:1); the file is crafted or corrupt")

    def attributes(self, oid, where: str) -> None:
        """Objects that attribute object references point at (anndata 0.7's `categories`): checked as well,
        since they may be reachable by no link at all."""
        for index in range(h5py.h5a.get_num_attrs(oid)):
            attr = h5py.h5a.open(oid, index=index)
            if attr.get_type().get_class() != h5py.h5t.REFERENCE:
                continue
            try:
                dtype = attr.dtype
            except (TypeError, ValueError):
                continue  # a reference kind h5py cannot read: nothing here can follow it either
            if h5py.check_ref_dtype(dtype) is None:
                continue
            values = np.empty(attr.shape, dtype=dtype)
            attr.read(values)
            label = f"{where} (its attribute {_shown(attr.name)})"
            for ref in values.ravel():
                if ref:
                    self.object(h5py.h5r.dereference(ref, self.fid), f"referenced from {label}")


def _stored_bytes(did, dcpl, needed: int) -> int:
    """The dataset's stored bytes, or any count of at least `needed` of them. A chunked dataset's chunks are
    summed in index order only until `needed` is reached: its whole chunk index is scattered through the
    file (one B-tree node per 64 chunks, written between the data), and reading all of it over S3 would
    fetch most of the file. An honest dataset reaches `needed` within its first few chunks."""
    if dcpl.get_layout() != h5py.h5d.CHUNKED:
        return did.get_storage_size()  # contiguous or compact: one number in the object header
    seen = 0

    def add(chunk) -> bool | None:
        nonlocal seen
        seen += chunk.size
        return True if seen >= needed else None  # anything but None stops the iteration

    try:
        did.chunk_iter(add)
    except (AttributeError, NotImplementedError):  # h5py < 3.8 or HDF5 < 1.12.3: no chunk iteration
        return did.get_storage_size()
    return seen


def _declared_cells(f: h5py.File, name: str) -> list[tuple[str, int]]:
    """(HDF5 path, cells it declares) for obs's index and each matrix whose rows are cells."""
    found: list[tuple[str, int]] = []
    obs = f.get("obs")
    if isinstance(obs, h5py.Group):
        key = index_key(obs)
        obs = obs.get(key) if key else None
    if isinstance(obs, h5py.Dataset) and obs.ndim:
        found.append((obs.name, int(obs.shape[0])))
    layers = f.get("layers")
    places = [*MATRICES, *(f"layers/{k}" for k in (layers if isinstance(layers, h5py.Group) else ()))]
    for place in places:
        node = f.get(place)
        if isinstance(node, h5py.Dataset) and node.ndim:
            found.append((node.name, int(node.shape[0])))
        elif isinstance(node, h5py.Group):
            for attr_name in ("shape", "h5sparse_shape"):
                if attr_name not in node.attrs:
                    continue
                attr = node.attrs.get_id(attr_name)
                if attr.shape and math.prod(attr.shape) > 16:  # a matrix's shape is two numbers
                    raise InputError(f"{name}: HDF5 object {node.name} has a {attr_name} attribute "
                                     f"of {math.prod(attr.shape):,} values; a matrix's shape is 2")
                try:
                    found.append((f"{node.name} (attribute {attr_name})", int(np.ravel(node.attrs[attr_name])[0])))
                except (TypeError, ValueError, IndexError, OverflowError):
                    pass  # not a number: h5ad_layout says so when it reads the matrix
                break
    return found


def _check_cells(f: h5py.File, name: str, size: int, max_cells: int | None) -> None:
    for where, cells in _declared_cells(f, name):
        if cells > size:
            raise InputError(f"{name}: HDF5 object {where} declares {cells:,} cells, more than a "
                             f"{size_text(size)} file can hold (each cell needs at least its name and row "
                             "pointer); the file is crafted or corrupt")
        if max_cells is not None and cells > max_cells:
            raise InputError(f"{name}: HDF5 object {where} declares {cells:,} cells, over the profile's cap of "
                             f"{max_cells:,} (max_cells); use a larger profile or split the file")
