# The issue-13 Debian workload's application: prints a digest of its own source.
import hashlib
import platform

with open(__file__, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
print(f"app on Python {platform.python_version()}: {digest[:16]}")
