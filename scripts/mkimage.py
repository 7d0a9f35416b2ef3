#!/usr/bin/env python3
"""Write a container image as a docker-archive tarball (what `docker save` writes, and what
`ctr images import` and `kind load image-archive` read) with no container engine and no registry:
one layer built from host files, plus the image config and manifest.json.

usage: mkimage.py OUT.tar --tag REF [--tag REF]...
                  [--file SRC:DST[:MODE]]...   a host file (symlinks followed) at DST in the image
                  [--tree SRC:DST]...          a host directory, recursively (symlinks kept)
                  [--link DST:TARGET]...       a symlink DST -> TARGET
                  [--dir DST]...               an empty directory
                  [--entrypoint JSON] [--cmd JSON] [--env K=V]... [--workdir DIR]

Everything is owned by root, timestamps are fixed: the same inputs give the same bytes (and the
same image id). Used by scripts/image and scripts/kube-node-e2e.
"""
import argparse
import hashlib
import io
import json
import os
import stat
import sys
import tarfile

EPOCH = 1700000000  # fixed mtime: reproducible layers
CREATED = "2023-11-14T22:13:20Z"


class Layer:
    def __init__(self):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)
        self.entries = {}  # path -> kind, so that a path is written once

    def _info(self, path, kind, mode):
        ti = tarfile.TarInfo(path)
        ti.type, ti.mode, ti.mtime = kind, mode, EPOCH
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        return ti

    def parents(self, path):
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.dir("/".join(parts[:i]))

    def dir(self, path, mode=0o755):
        path = path.strip("/")
        if not path or path in self.entries:
            return
        self.parents(path)
        self.tar.addfile(self._info(path, tarfile.DIRTYPE, mode))
        self.entries[path] = "dir"

    def file(self, src, dst, mode=None):
        dst = dst.strip("/")
        if dst in self.entries:
            return
        self.parents(dst)
        with open(src, "rb") as f:
            data = f.read()
        if mode is None:
            mode = stat.S_IMODE(os.stat(src).st_mode) & 0o755
        ti = self._info(dst, tarfile.REGTYPE, mode)
        ti.size = len(data)
        self.tar.addfile(ti, io.BytesIO(data))
        self.entries[dst] = "file"

    def link(self, dst, target):
        dst = dst.strip("/")
        if dst in self.entries:
            return
        self.parents(dst)
        ti = self._info(dst, tarfile.SYMTYPE, 0o777)
        ti.linkname = target
        self.tar.addfile(ti)
        self.entries[dst] = "link"

    def tree(self, src, dst):
        self.dir(dst)
        for root, dirs, files in os.walk(src):
            rel = os.path.relpath(root, src)
            base = dst.strip("/") if rel == "." else dst.strip("/") + "/" + rel
            for name in sorted(dirs) + sorted(files):
                p = os.path.join(root, name)
                if os.path.islink(p):
                    self.link(base + "/" + name, os.readlink(p))
                elif os.path.isdir(p):
                    self.dir(base + "/" + name)
                else:
                    self.file(p, base + "/" + name)
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]

    def close(self):
        self.tar.close()
        return self.buf.getvalue()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--tag", action="append", required=True)
    ap.add_argument("--file", action="append", default=[])
    ap.add_argument("--tree", action="append", default=[])
    ap.add_argument("--link", action="append", default=[])
    ap.add_argument("--dir", action="append", default=[])
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--entrypoint")
    ap.add_argument("--cmd")
    ap.add_argument("--workdir", default="/")
    a = ap.parse_args()

    layer = Layer()
    for d in ["dev", "proc", "sys", "etc", "run"] + a.dir:
        layer.dir(d)
    layer.dir("tmp", 0o1777)
    for spec in a.file:
        src, dst, *mode = spec.split(":")
        layer.file(src, dst, int(mode[0], 8) if mode else None)
    for spec in a.tree:
        src, dst = spec.split(":")
        layer.tree(src, dst)
    for spec in a.link:
        dst, target = spec.split(":")
        layer.link(dst, target)
    blob = layer.close()
    diff_id = hashlib.sha256(blob).hexdigest()

    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": CREATED,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] + a.env,
            "WorkingDir": a.workdir,
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff_id]},
        "history": [{"created": CREATED, "created_by": "scripts/mkimage.py"}],
    }
    if a.entrypoint:
        config["config"]["Entrypoint"] = json.loads(a.entrypoint)
    if a.cmd:
        config["config"]["Cmd"] = json.loads(a.cmd)
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_id = hashlib.sha256(config_bytes).hexdigest()
    manifest = [{"Config": config_id + ".json", "RepoTags": a.tag, "Layers": [diff_id + "/layer.tar"]}]

    tmp = a.out + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as out:
        def put(name, data):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode = len(data), EPOCH, 0o644
            out.addfile(ti, io.BytesIO(data))

        ti = tarfile.TarInfo(diff_id)
        ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, EPOCH
        out.addfile(ti)
        put(diff_id + "/layer.tar", blob)
        put(config_id + ".json", config_bytes)
        put("manifest.json", json.dumps(manifest).encode())
    os.replace(tmp, a.out)
    print(f"{a.out}: {', '.join(a.tag)} (layer {len(blob) / 1e6:.1f} MB, image id sha256:{config_id[:12]})",
          file=sys.stderr)


if __name__ == "__main__":
    main()
