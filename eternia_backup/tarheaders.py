"""Tar header blocks, byte for byte what ``tarfile`` writes in PAX format, built fast.

Shared by the built-in tar archiver (every member it writes) and the restore's feed to
GNU tar (:mod:`eternia_backup.system_tar`, which writes headers for the members it hands
over). At 300,000 tiny files the header was most of the Python work per file, so the
usual one -- a regular file whose only pax record is its exact mtime -- is built from
cached pieces (:func:`file_header_parts`); anything unusual goes through
:func:`member_header`, which leaves the rare cases to ``tarfile`` itself
(tests/test_format_conformance.py compares them all with ``TarInfo.tobuf``).
"""

from __future__ import annotations

import tarfile
import zlib

_BLOCK = tarfile.BLOCKSIZE

_NUL100 = bytes(100)
# after the link name: magic and version, empty uname and gname (no owner-name lookups),
# no device numbers, no prefix (long names go in pax records), the block's padding
_USTAR_TAIL = tarfile.POSIX_MAGIC + bytes(32 + 32 + 8 + 8 + 155 + 12)
_TAIL_SUM = sum(_USTAR_TAIL) + 8 * ord(" ")  # the checksum field counts as spaces
_MAX_ID = 8 ** 7  # octal fields of 8 and 12 bytes (7 and 11 digits)
_MAX_NUM = 8 ** 11
_MAX_MTIME_NS = _MAX_NUM * 1_000_000_000
_pax_blocks: dict[int, bytes] = {}
adler32 = zlib.adler32


def _ustar(name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, kind: bytes, link: bytes) -> bytes:
    """One ustar block (fields known to fit: name and link of at most 100 bytes), as tarfile's
    ``_create_header`` makes it."""
    numbers = b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (mode, uid, gid, size, mtime)
    # the sums of the fields' bytes (NULs add nothing), by adler32 in C: its low half is 1 + the
    # sum modulo 65521, exact for up to 256 bytes (sum() over the bytes cost ~1 us a file)
    chksum = ((adler32(name) & 0xFFFF) + (adler32(numbers) & 0xFFFF) + (adler32(link) & 0xFFFF) - 3
              + kind[0] + _TAIL_SUM)
    return b"%s%s%s%06o\0 %s%s%s%s" % (name, _NUL100[len(name):], numbers, chksum, kind, link, _NUL100[len(link):],
                                       _USTAR_TAIL)


def _pax(records: dict[str, str]) -> bytes:
    """A pax extended header with its records; UnicodeEncodeError when a value needs
    ``hdrcharset=BINARY`` (left to tarfile)."""
    out = []
    for key, value in records.items():
        k, v = key.encode("utf-8"), value.encode("utf-8")
        length = len(k) + len(v) + 3  # ' ', '=', '\n' and the length's own digits
        p = 0
        while (n := length + len(str(p))) != p:
            p = n
        out.append(b"%d %s=%s\n" % (p, k, v))
    data = b"".join(out)
    return _pax_block(len(data)) + data + bytes(-len(data) % _BLOCK)


def _pax_block(size: int) -> bytes:
    """The ustar block of a pax header of ``size`` bytes of records: it depends only on the size,
    so it is built once per size."""
    block = _pax_blocks.get(size)
    if block is None:
        block = _ustar(b"././@PaxHeader", 0, 0, 0, size, 0, tarfile.XHDTYPE, b"")
        if len(_pax_blocks) < 4096:
            _pax_blocks[size] = block
    return block


def member_header(name: str, kind: bytes, mode: int, uid: int, gid: int, size: int, mtime: int,
            linkname: str, pax: dict[str, str]) -> bytes:
    """A member's header blocks, byte for byte what ``TarInfo.tobuf(PAX_FORMAT)`` gives
    (tests/test_format_conformance.py compares them); tarfile builds the unusual ones."""
    if kind == tarfile.DIRTYPE and not name.endswith("/"):
        name += "/"
    if (name.isascii() and len(name) <= 100 and linkname.isascii() and len(linkname) <= 100
            and 0 <= uid < _MAX_ID and 0 <= gid < _MAX_ID and 0 <= size < _MAX_NUM and 0 <= mtime < _MAX_NUM):
        try:
            records = _pax(pax) if pax else b""
        except UnicodeEncodeError:
            pass
        else:
            return records + _ustar(name.encode("ascii"), mode & 0o7777, uid, gid, size, mtime, kind,
                                    linkname.encode("ascii"))
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid = kind, mode & 0o7777, uid, gid
    info.size, info.mtime, info.linkname = size, mtime, linkname
    info.uname = info.gname = ""
    info.pax_headers = dict(pax)
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


NUL512 = _NUL512 = bytes(_BLOCK)
#: NULS[n]: n NUL bytes, shared (a slice of NUL512 is a new copy each time)
NULS = _NULS = [bytes(n) for n in range(_BLOCK + 1)]
#: kind, no link name, and the rest of a regular file's ustar block after its checksum field
_REG_TAIL = tarfile.REGTYPE + _NUL100 + _USTAR_TAIL
_REG_SUM = _TAIL_SUM + tarfile.REGTYPE[0]
# Formatting numbers was most of a tiny file's header: the fields that repeat across a tree are
# kept formatted, with the sum of their bytes (for the checksum). Bounded: a tree of many
# distinct sizes just formats the others.
_fields_cache: dict[tuple[int, int, int, int], tuple[bytes, int]] = {}  # (mode, uid, gid, size)
_FIELDS_CACHED = 4096
_seconds_cache: dict[int, tuple[bytes, int, bytes]] = {}  # mtime seconds: octal field, its sum, "S."
_SECONDS_CACHED = 1024
_checksums: dict[int, bytes] = {}  # checksum -> its field; at most 512 * 255 keys, a few thousand in practice
#: a pax header of one "mtime" record of n bytes (10 to 99): its block and b"NN mtime=", built
#: on first use; and what follows the value: b"\n" and the padding
_mtime_start: dict[int, bytes] = {}
_MTIME_END = {n: b"\n" + bytes(_BLOCK - n) for n in range(10, 100)}
#: bytes of a header by its number of pieces: a ustar block (6), or a pax header before it (10)
HEADER_BYTES = {6: _BLOCK, 10: 3 * _BLOCK}


def file_header_parts(name: str, mode: int, uid: int, gid: int, size: int, mtime_ns: int) -> tuple | None:
    """The header of a regular file whose only pax record is its exact mtime, as pieces to join: the
    same bytes as ``_header`` gives, in fewer steps (the header was most of the Python work per tiny
    file); None when anything is unusual (then ``member_header`` builds it)."""
    if not (len(name) <= 100 and name.isascii() and 0 <= mtime_ns < _MAX_MTIME_NS):
        return None
    fields = _fields_cache.get((mode, uid, gid, size))
    if fields is None:
        if not (0 <= uid < _MAX_ID and 0 <= gid < _MAX_ID and 0 <= size < _MAX_NUM):
            return None
        numbers = b"%07o\0%07o\0%07o\0%011o\0" % (mode & 0o7777, uid, gid, size)
        fields = (numbers, sum(numbers))
        if len(_fields_cache) < _FIELDS_CACHED:
            _fields_cache[(mode, uid, gid, size)] = fields
    seconds, frac = divmod(mtime_ns, 1_000_000_000)
    when = _seconds_cache.get(seconds)
    if when is None:
        octal = b"%011o\0" % seconds
        when = (octal, sum(octal), b"%d." % seconds)
        if len(_seconds_cache) >= _SECONDS_CACHED:
            _seconds_cache.clear()
        _seconds_cache[seconds] = when
    encoded = name.encode("ascii")
    # the sum of the name's bytes by adler32 in C: its low half is 1 + the sum modulo 65521
    checksum = (adler32(encoded) & 0xFFFF) - 1 + fields[1] + when[1] + _REG_SUM
    field = _checksums.get(checksum)
    if field is None:
        field = _checksums[checksum] = b"%06o\0 " % checksum
    ustar = (encoded, _NULS[100 - len(encoded)], fields[0], when[0], field, _REG_TAIL)
    if not frac:
        return ustar
    digits = (b"%09d" % frac).rstrip(b"0")
    length = len(when[2]) + len(digits) + 10  # "NN mtime=" and "\n": 10 to 99 bytes have a 2-digit length
    if length > 99:
        return None
    start = _mtime_start.get(length)
    if start is None:
        start = _mtime_start[length] = _pax_block(length) + b"%d mtime=" % length
    return (start, when[2], digits, _MTIME_END[length]) + ustar


def file_header(name: str, mode: int, uid: int, gid: int, size: int, mtime_ns: int) -> bytes | None:
    """``file_header_parts`` joined."""
    parts = file_header_parts(name, mode, uid, gid, size, mtime_ns)
    return None if parts is None else b"".join(parts)


