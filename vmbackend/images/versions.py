"""TEMPORARY: the old path of vmbackend.protocol.versions, for orders/ and store/ until their
imports are rewritten after the layout merge (issue 19). Delete this file then.
"""

from vmbackend.protocol.versions import *  # noqa: F403
