"""VM images: recipes and builds (tiny, Debian, Arch), their manifests, the files for the guest.

May import vmbackend.protocol and vmbackend.files; never machine or host (snapshots: machine/).
"""
