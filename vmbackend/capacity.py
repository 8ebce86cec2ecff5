"""TEMPORARY: the old path of vmbackend.protocol.capacity, for orders/ and store/ until their imports
are rewritten after the layout merge (issue 19). Delete this file then; nothing else imports it.
"""

from vmbackend.protocol.capacity import *  # noqa: F403
