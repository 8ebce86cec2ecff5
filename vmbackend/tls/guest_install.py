"""A VM's certificate in its guest: the files, RabbitMQ's TLS listeners, reloads on renewal.

Written through the guest agent (no image change: the image and its saved state carry no key and
no TLS setting). The files go to /etc/rabbitmq/tls (key 0400, owned by rabbitmq) and a conf.d
drop-in turns on amqps (5671) and the management UI on https (15671); the drop-in and the files
stay on the VM's disk, so a later cold start (start-vm, a heal) has TLS from the start.

- First certificate: RabbitMQ reads its listeners from the config only when it starts, and a
  node restart costs minutes under TCG (measured: docs/tls.md), so the running node is asked to
  start the TLS listeners itself (rabbit_networking:start_ssl_listener, the management plugin's
  https context through rabbit_web_dispatch), with the same files the drop-in names.
- Renewal: the new files replace the old ones and `ssl:clear_pem_cache()` makes the next TLS
  handshake read them; open connections keep theirs, nothing restarts.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from vmbackend.tls.authority import Leaf

log = logging.getLogger(__name__)

TLS_DIR = "/etc/rabbitmq/tls"
CONF = "/etc/rabbitmq/conf.d/90-warren-tls.conf"
AMQPS_PORT = 5671
HTTPS_PORT = 15671
EXEC_SECONDS = 120.0  # the hidden Erlang node and its three tries, under TCG on a loaded host

NODE = "rabbit@localhost"  # NODENAME in the image's rabbitmq-env.conf
_OPTS = (
    f'[{{certfile, "{TLS_DIR}/cert.pem"}}, {{keyfile, "{TLS_DIR}/key.pem"}}, '
    f'{{cacertfile, "{TLS_DIR}/cacert.pem"}}]'
)
# Run on a bare hidden Erlang node (authenticated by rabbitmq's cookie file; ~6 s under TCG where
# rabbitmqctl takes ~40 s and a node restart minutes): the running node starts its TLS listeners
# (amqps, the management UI's https context) with the files, or only forgets the cached PEM files
# so the next handshake reads the renewed ones. "already started" counts as done (a retry).
START_EXPR = f"""N = '{NODE}', Opts = {_OPTS},
Ok = fun(ok) -> ok; ({{ok, _}}) -> ok; ({{error, {{already_started, _}}}}) -> ok;
        ({{error, {{{{already_started, _}}, _}}}}) -> ok; (E) -> E end,
S = Ok(rpc:call(N, application, ensure_all_started, [ssl], 30000)),
C = Ok(rpc:call(N, ssl, clear_pem_cache, [], 30000)),
A = Ok(rpc:call(N, rabbit_networking, start_ssl_listener, [{AMQPS_PORT}, Opts, 10], 60000)),
D = rpc:call(N, rabbit_mgmt_dispatcher, build_dispatcher, [[]], 60000),
M = Ok(rpc:call(N, rabbit_web_dispatch, register_context_handler,
        [rabbit_mgmt_tls, [{{port, {HTTPS_PORT}}}, {{ssl, true}}, {{ssl_opts, Opts}}], "", D,
         "RabbitMQ Management"], 60000)),
P = case os:getenv("WARREN_PLAIN") of "0" ->
        Ok(rpc:call(N, rabbit_networking, stop_tcp_listener, [5672], 60000)); _ -> ok end,
case {{S, C, A, M, P}} of {{ok, ok, ok, ok, ok}} -> halt(0);
    Other -> io:format("~p~n", [Other]), halt(1) end."""
RELOAD_EXPR = f"""case rpc:call('{NODE}', ssl, clear_pem_cache, [], 30000) of
    ok -> halt(0); Other -> io:format("~p~n", [Other]), halt(1) end."""
# One guest-exec (each costs about a second under TCG). $0: "start" or "reload" (the host
# decides: start when the listeners may not run yet); $1: 1/0 plain ports; $2: the Erlang
# expression; $3: the drop-in's text. stdin: the key, the certificate, then the chain above it
# (PEM blocks in that order); each goes to a fresh folder, then all are moved into place at once.
# Root runs this in a guest whose /etc/rabbitmq the rabbitmq user may write (the image gives it
# the folder): no name that user could plant (a symlink to /etc/shadow) is ever opened, chowned
# or chmodded. The files are made in a fresh folder inside the TLS folder, which belongs to root
# and is entered once and checked to be itself (`pwd -P`: no symlink), then renamed into place:
# a rename replaces a name and never follows it.
INSTALL = f"""set -eu
umask 077
d={TLS_DIR}
conf={CONF}
mkdir -p "$d" "${{conf%/*}}"
cd "$d"
[ "$(pwd -P)" = "$d" ] || {{ echo "$d is not a real folder" >&2; exit 3; }}
chown root:rabbitmq .
chmod 0750 .
rm -rf ./*.new ./.install.*
t=$(mktemp -d .install.XXXXXX)
awk -v d="$t" '/^-----BEGIN /{{n++}} {{f = n == 1 ? "key.pem" : n == 2 ? "cert.pem" : "cacert.pem"; print > (d "/" f)}}'
for f in key.pem cert.pem cacert.pem; do
    [ -s "$t/$f" ] || {{ echo "no $f in the input" >&2; exit 2; }}
    chown -h rabbitmq:rabbitmq "$t/$f"
done
chmod 0400 "$t/key.pem"
chmod 0444 "$t/cert.pem" "$t/cacert.pem"
printf '%s' "$3" > "$t/conf"
chmod 0644 "$t/conf"
for f in key.pem cert.pem cacert.pem; do mv -fT "$t/$f" "$f"; done
cd "${{conf%/*}}"
[ "$(pwd -P)" = "${{conf%/*}}" ] || {{ echo "${{conf%/*}} is not a real folder" >&2; exit 3; }}
mv -fT "$d/$t/conf" "${{conf##*/}}"
rmdir "$d/$t"
cd /var/lib/rabbitmq
# Three tries, 5 s apart: a cookie rotation finishing (a daemon restarted between
# personalization and this step) makes the node refuse us for a moment.
for try in 1 2 3; do
    if runuser -u rabbitmq -- env HOME=/var/lib/rabbitmq WARREN_PLAIN="$1" erl -sname "warren-tls-$$-$try" -hidden -noshell -noinput -eval "$2"; then
        echo "$0"
        exit 0
    fi
    if [ "$0" = start ] && ! pgrep -u rabbitmq beam.smp >/dev/null; then
        echo "not running"  # the node reads the drop-in when it starts
        exit 0
    fi
    [ "$try" = 3 ] || sleep 5
done
exit 1
"""


class Guest(Protocol):
    def guest_exec(
        self,
        path: str,
        args: list[str] | None = None,
        *,
        input_data: bytes | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, bytes]: ...


class GuestTLSError(Exception):
    """The certificate could not be put into the guest; the message says which step."""


def rabbitmq_conf(*, plain_ports: bool) -> str:
    """The drop-in: TLS listeners with the VM's files; without `plain_ports` no plain AMQP
    listener (the plain management listener stays: the host's own calls use it, and the host
    does not forward it to customers then, see boot.spec_for)."""
    lines = [
        "# Warren: TLS with the VM's own certificate (written by the host, docs/tls.md)",
        f"listeners.ssl.default = {AMQPS_PORT}",
        f"ssl_options.cacertfile = {TLS_DIR}/cacert.pem",
        f"ssl_options.certfile = {TLS_DIR}/cert.pem",
        f"ssl_options.keyfile = {TLS_DIR}/key.pem",
        "ssl_options.verify = verify_none",
        "ssl_options.fail_if_no_peer_cert = false",
        f"management.ssl.port = {HTTPS_PORT}",
        f"management.ssl.cacertfile = {TLS_DIR}/cacert.pem",
        f"management.ssl.certfile = {TLS_DIR}/cert.pem",
        f"management.ssl.keyfile = {TLS_DIR}/key.pem",
    ]
    if not plain_ports:
        lines.append("listeners.tcp = none")
    return "\n".join(lines) + "\n"


def install(guest: Guest, leaf: Leaf, *, plain_ports: bool, start: bool = True) -> str:
    """Put `leaf` into the guest and make RabbitMQ use it: `start` its TLS listeners (the first
    certificate of a VM, or a boot that may predate the drop-in), else only reload the files
    (renewal). Returns "start", "reload" or "not running"."""
    started = time.monotonic()
    if not leaf.key_pem.startswith(b"-----BEGIN ") or leaf.cert_pem.count(b"-----BEGIN ") != 1:
        raise GuestTLSError("the key and the certificate must be one PEM block each")
    cacert = leaf.chain_pem[len(leaf.cert_pem) :] + leaf.ca_pem  # intermediate(s), then root
    code, out = guest.guest_exec(
        "/bin/sh",
        [
            "-c",
            INSTALL,
            "start" if start else "reload",
            "1" if plain_ports else "0",
            START_EXPR if start else RELOAD_EXPR,
            rabbitmq_conf(plain_ports=plain_ports),
        ],
        input_data=leaf.key_pem + leaf.cert_pem + cacert,
        timeout=EXEC_SECONDS,
    )
    lines = out.decode("utf-8", "replace").strip().splitlines()
    outcome = lines[-1:] or [""]
    if code != 0:
        detail = " ".join(lines)[-300:]
        raise GuestTLSError(f"installing the certificate exited {code}: {detail}")
    log.info("tls installed how=%s seconds=%.1f", outcome[0], time.monotonic() - started)
    return outcome[0]


# Images with baked TLS (docs/tls.md): the listeners run from the image on, with one file that
# holds the key, the certificate and the intermediate (the chain in `certfile`: a `cacertfile`
# is cached by name even with the PEM cache off), and Erlang's PEM cache is off, so the next
# handshake reads whatever the file holds: writing it is the whole install and the whole reload.
SERVER_PEM = f"{TLS_DIR}/server.pem"
# Renewal while customers connect: the new file next to the old, then one rename, so no
# handshake reads half a file. `mv` keeps the new file's owner and mode; an existing
# server.pem.new (a renewal cut off) is replaced. A symlink planted at server.pem.new is removed,
# never followed (rm, then a file created with noclobber).
RENEW = f"""set -eu
umask 077
f={SERVER_PEM}
rm -f "$f.new"
set -C
cat > "$f.new"
set +C
chown rabbitmq:rabbitmq "$f.new"
chmod 0400 "$f.new"
mv -f "$f.new" "$f"
"""


class FileGuest(Protocol):
    def write_guest_file(self, path: str, data: bytes) -> None: ...


def server_pem(leaf: Leaf) -> bytes:
    """The VM's server.pem: its key, then its certificate and the intermediate(s) above it."""
    if not leaf.key_pem.startswith(b"-----BEGIN ") or leaf.cert_pem.count(b"-----BEGIN ") != 1:
        raise GuestTLSError("the key and the certificate must be one PEM block each")
    if not leaf.chain_pem.startswith(leaf.cert_pem):
        raise GuestTLSError("the chain must start with the certificate")
    return leaf.key_pem + leaf.chain_pem


def put(guest: FileGuest, leaf: Leaf) -> None:
    """Write the VM's own server.pem over the image's throw-away one, in place: three guest-agent
    calls, no program started in the guest (~0.3 s under TCG). The file keeps the image's owner
    (rabbitmq) and mode (0400). Only while the VM's TLS ports are not forwarded: a handshake
    during the write could read half a file (it would fail; it cannot serve another key)."""
    started = time.monotonic()
    guest.write_guest_file(SERVER_PEM, server_pem(leaf))  # raises the guest's own error
    log.info("tls written how=put seconds=%.2f", time.monotonic() - started)


def renew(guest: Guest, leaf: Leaf) -> None:
    """Replace server.pem atomically (one guest-exec): a renewal while customers connect, or the
    first file of a cold-booted VM. Open connections keep the certificate they started with."""
    started = time.monotonic()
    code, out = guest.guest_exec("/bin/sh", ["-c", RENEW], input_data=server_pem(leaf))
    if code != 0:
        detail = out.decode("utf-8", "replace").strip()[-300:]
        raise GuestTLSError(f"writing {SERVER_PEM} exited {code}: {detail}")
    log.info("tls written how=renew seconds=%.2f", time.monotonic() - started)
