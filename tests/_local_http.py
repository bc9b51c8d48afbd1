"""A bounded HTTP file server on 127.0.0.1 for the download tests (no other address, ever).

``with LocalFiles({"a.tar.gz": data}) as server:`` serves ``server.url + "/a.tar.gz"`` with HTTP
Range support, records every request (``server.requests``: ``(name, Range header or None)``) and
stops itself after ``timeout`` seconds even if a test forgets it. ``cut={"a.tar.gz": n}`` makes the
first GET of that file announce its full length, send ``n`` bytes and drop the connection (an
interrupted download); ``ranges=False`` ignores Range headers (a host without resume).
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image


class LocalFiles:
    def __init__(self, files: dict[str, bytes], *, cut: dict[str, int] | None = None, ranges: bool = True,
                 content_types: dict[str, str] | None = None, timeout: float = 60.0) -> None:
        self.files = dict(files)
        self.cut = dict(cut or {})
        self.ranges = ranges
        self.content_types = dict(content_types or {})
        self.timeout = timeout
        self.requests: list[tuple[str, str | None]] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "LocalFiles":
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802
                name = self.path.lstrip("/").split("?")[0]
                rng = self.headers.get("Range")
                owner.requests.append((name, rng))
                data = owner.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and owner.ranges:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Type", owner.content_types.get(name, "application/octet-stream"))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if name in owner.cut:
                    n = owner.cut.pop(name)
                    self.wfile.write(body[:n])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        self._watchdog = threading.Timer(self.timeout, self._server.shutdown)
        self._watchdog.daemon = True
        self._watchdog.start()
        return self

    def __exit__(self, *exc) -> None:
        self._watchdog.cancel()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def names(self) -> list[str]:
        return [name for name, _ in self.requests]


# --------------------------------------------------------------------------------------------- archives
def jpeg_bytes(color: tuple[int, int, int], size: tuple[int, int] = (16, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


DTD_CLASSES = ("banded", "blotchy", "braided")


def fake_dtd(per_split: tuple[int, int, int] = (2, 1, 1)) -> tuple[bytes, bytes]:
    """``(archive, split_file)``: dtd-r1.0.1.tar.gz's inner layout (``dtd/images/<class>/...``,
    ``dtd/imdb/``, ``dtd/labels/``) with 3 classes of tiny JPEGs, and a CoOp split file for them."""
    members: dict[str, bytes] = {"dtd/imdb/imdb.mat": b"not read", "dtd/labels/labels_joint_anno.txt": b"x\n"}
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    n = 0
    for label, cls in enumerate(DTD_CLASSES):
        for part, count in zip(("train", "val", "test"), per_split):
            for _ in range(count):
                n += 1
                rel = f"{cls}/{cls}_{n:04d}.jpg"
                members[f"dtd/images/{rel}"] = jpeg_bytes((40 * label + 30, 8 * n % 256, 200 - 50 * label))
                split[part].append([rel, label, cls])
    return tar_gz(members), json.dumps(split).encode()


def pin(monkeypatch, name: str, files: dict[str, bytes]) -> None:
    """Point the download table's checksums of ``name`` at the fake files (md5 for archives,
    sha256 and size for the split file; a fake split file replaces the package's)."""
    import dataclasses
    import hashlib

    from ssp.data import catalog

    src = catalog._CATALOG[name]
    resources = tuple(dataclasses.replace(r, md5=hashlib.md5(files[r.filename]).hexdigest())
                      for r in src.resources if r.filename in files)
    split = src.split
    if split is not None and split.filename in files:
        data = files[split.filename]
        split = dataclasses.replace(split, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
        # the fake split file is served, not the one shipped in the package
        monkeypatch.setattr(catalog, "PACKAGED_SPLITS", Path(__file__).parent / "no-shipped-splits")
    monkeypatch.setitem(catalog._CATALOG, name, dataclasses.replace(src, resources=resources or src.resources,
                                                                    split=split))


def dtd_files() -> dict[str, bytes]:
    archive, split = fake_dtd()
    return {"dtd-r1.0.1.tar.gz": archive, "split_zhou_DescribableTextures.json": split}


def write_tree(root: Path, members: dict[str, bytes]) -> None:
    for name, data in members.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def linked_copy(src: Path, dst: Path) -> Path:
    """A temp copy of a real dataset folder: split file copied, every image a symbolic link."""
    for dirpath, _, files in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            if name.endswith(".json"):
                (dst / rel / name).write_bytes((Path(dirpath) / name).read_bytes())
            else:
                (dst / rel / name).symlink_to(Path(dirpath) / name)
    return dst
