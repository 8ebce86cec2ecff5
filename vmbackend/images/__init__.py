"""VM images: recipes and builds (tiny, Debian, Arch), their manifests and the files put in the guest.

May import vmbackend.protocol and vmbackend.files; never machine or host (snapshots live in machine).
"""
