"""Warren's certificates: the CA that issues them (authority) and their install in a guest.

May import vmbackend.files only.
"""
