"""Warren's certificates: the CA that issues them (authority) and their install in a guest (guest_install).

May import vmbackend.files only.
"""
