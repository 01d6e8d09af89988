# Sent as `python3 -c <this file without its comment lines> WORKDIR SHA256 [install]`: short names
# keep it well under 1 KB, because dropbear refuses commands over ~9,000 bytes and the package is larger.
# Prints {"dir", "ready"} for WORKDIR/.toolchain/agent-<sha12> (~ expanded here, on the target). With
# `install` and the folder missing: reads the package zip from stdin, checks its sha256, unpacks it into
# a temporary folder beside and renames that into place, so the folder is complete or absent (when a
# concurrent twin renames first, ours is dropped).
import hashlib, io, json, os, shutil, sys, tempfile, zipfile
w, h = sys.argv[1:3]
r = os.path.join(os.path.abspath(os.path.expanduser(w)), ".toolchain")
d = os.path.join(r, "agent-" + h[:12])
if not os.path.isdir(d) and sys.argv[3:] == ["install"]:
    b = sys.stdin.buffer.read()
    if hashlib.sha256(b).hexdigest() != h:
        sys.exit("error: the agent package arrived corrupted")
    os.path.isdir(r) or os.makedirs(r)
    t = tempfile.mkdtemp(prefix=".agent-", dir=r)
    z = zipfile.ZipFile(io.BytesIO(b))
    for n in z.namelist():
        with open(os.path.join(t, os.path.basename(n)), "wb") as f:
            f.write(z.read(n))
    try:
        os.rename(t, d)
    except OSError:
        shutil.rmtree(t)
print(json.dumps({"dir": d, "ready": os.path.isdir(d)}))
