#!/bin/sh
# A tiny stand-in for RabbitMQ's management HTTP API (the endpoints Warren uses), one request per
# connection, run by `nc -ll -e`. Users live in /run/warren/users as "name:password" lines.
# GET  /api/overview                        any valid user -> 200 JSON
# GET  /api/whoami                          any valid user -> 200 JSON
# PUT  /api/users/NAME  {"password": ...}   create/replace a user
# DELETE /api/users/NAME                    remove a user
# PUT  /api/permissions/%2F/NAME            accepted (204)
# PUT  /api/vhost-limits/%2F/NAME {"value": N}   stored in /run/warren/limits
# GET  /api/nodes/rabbit@HOSTNAME           memory, disk, alarms, uptime (metrics)
# PUT  /api/warren-test/NAME {"value": V}   a test sets one metric the overview/node answer
#                                           (messages_ready, publish_rate, mem_alarm, ...);
#                                           DELETE puts its default back (see metrics below)
# GET  /api/connections[?columns=...]       200 [] (the tiny image has no AMQP listener)
# DELETE /api/connections/NAME              404 (no such connection)
USERS=/run/warren/users
cr=$(printf '\r')
read -r method path _proto || exit 0
auth=""
length=0
while read -r line; do
    line=${line%"$cr"}
    [ -z "$line" ] && break
    case "$line" in
        [Aa]uthorization:\ Basic\ *) auth=${line#*Basic } ;;
        [Cc]ontent-[Ll]ength:*) length=$(echo "${line#*:}" | tr -dc 0-9) ;;
    esac
done
body=""
[ "${length:-0}" -gt 0 ] && body=$(head -c "$length")

reply() {  # status text [body]
    printf 'HTTP/1.1 %s %s\r\nServer: warren-tiny\r\nConnection: close\r\n' "$1" "$2"
    if [ -n "$3" ]; then
        printf 'Content-Type: application/json\r\nContent-Length: %s\r\n\r\n%s' "${#3}" "$3"
    else
        printf 'Content-Length: 0\r\n\r\n'
    fi
    exit 0
}

creds=$(printf '%s' "$auth" | base64 -d 2>/dev/null)
who=${creds%%:*}
if [ -z "$auth" ] || [ ! -s "$USERS" ] || ! grep -qxF -- "$creds" "$USERS"; then
    printf 'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm="RabbitMQ Management"\r\n'
    printf 'Content-Length: 0\r\nConnection: close\r\n\r\n'
    exit 0
fi

name=${path##*/}
case "$name" in *[!A-Za-z0-9._@-]*|"") name="" ;; esac

# Metrics (docs/protocol.md, instance.metrics) with numbers that move: memory and uptime are the
# guest's own, free disk is /run's; a test sets the others (or overrides any) in /run/warren/test.
TEST=/run/warren/test
metrics() {  # no fork where it can be helped: every program costs a lot under TCG
    messages_ready=0 messages_unacknowledged=0 publish_rate=0.0 deliver_rate=0.0 ack_rate=0.0
    connections=0 channels=0 consumers=0 queues=0 disk_free_limit=50000000
    while read -r key value _unit; do
        case "$key" in MemTotal:) total=$value ;; MemAvailable:) avail=$value ;; esac
    done < /proc/meminfo
    mem_used=$(((total - avail) * 1024)) mem_limit=$((total * 1024 * 2 / 5))
    # shellcheck disable=SC2046 # df's last line, split into its fields on purpose
    set -- $(df -k /run 2>/dev/null | tail -n 1)
    disk_free=$((${4:-0} * 1024))
    for file in "$TEST"/*; do  # a test's values (names checked when they were PUT)
        [ -r "$file" ] && read -r value < "$file" && eval "${file##*/}=\$value"
    done
    if [ ! -r "$TEST/mem_alarm" ]; then
        mem_alarm=false; [ "$mem_used" -gt "$mem_limit" ] && mem_alarm=true
    fi
    if [ ! -r "$TEST/disk_free_alarm" ]; then
        disk_free_alarm=false; [ "$disk_free" -lt "$disk_free_limit" ] && disk_free_alarm=true
    fi
    read -r up _idle < /proc/uptime
    centis=${up#*.}
    uptime=$((${up%.*} * 1000 + ${centis#0} * 10))  # "07" would read as octal
}
totals() {  # the overview's metric fields
    metrics
    printf '"queue_totals":{"messages":%s,"messages_ready":%s,"messages_unacknowledged":%s},' \
        $((messages_ready + messages_unacknowledged)) "$messages_ready" "$messages_unacknowledged"
    printf '"message_stats":{"publish_details":{"rate":%s},"deliver_get_details":{"rate":%s},' \
        "$publish_rate" "$deliver_rate"
    printf '"ack_details":{"rate":%s}},"object_totals":{"connections":%s,"channels":%s,' \
        "$ack_rate" "$connections" "$channels"
    printf '"consumers":%s,"queues":%s,"exchanges":7}' "$consumers" "$queues"
}
read -r host < /proc/sys/kernel/hostname

case "$method $path" in
    "GET /api/overview")
        reply 200 OK "{\"management_version\":\"tiny\",\"rabbitmq_version\":\"0.0.0-tiny\",\"erlang_version\":\"none\",\"cluster_name\":\"rabbit@$(hostname)\",\"node\":\"rabbit@$(hostname)\",\"user\":\"$who\",$(totals)}" ;;
    "GET /api/nodes/rabbit%40$host"|"GET /api/nodes/rabbit@$host")
        metrics
        reply 200 OK "{\"name\":\"rabbit@$host\",\"running\":true,\"mem_used\":$mem_used,\"mem_limit\":$mem_limit,\"mem_alarm\":$mem_alarm,\"disk_free\":$disk_free,\"disk_free_limit\":$disk_free_limit,\"disk_free_alarm\":$disk_free_alarm,\"uptime\":$uptime}" ;;
    "PUT /api/warren-test/"*)
        case "$name" in
            messages_ready|messages_unacknowledged|publish_rate|deliver_rate|ack_rate) ;;
            connections|channels|consumers|queues|mem_used|mem_limit|mem_alarm) ;;
            disk_free|disk_free_limit|disk_free_alarm) ;;
            *) reply 404 "Not Found" ;;
        esac
        value=$(printf '%s' "$body" | sed -n 's/.*"value"[[:space:]]*:[[:space:]]*\([0-9][0-9.]*\|true\|false\).*/\1/p')
        [ -n "$value" ] || reply 400 "Bad Request"
        mkdir -p "$TEST" && echo "$value" > "$TEST/$name"
        reply 204 "No Content" ;;
    "DELETE /api/warren-test/"*)
        rm -f "$TEST/$name"
        reply 204 "No Content" ;;
    "GET /api/connections"|"GET /api/connections?"*)
        reply 200 OK "[]" ;;
    "DELETE /api/connections/"*)
        reply 404 "Not Found" ;;
    "GET /api/whoami")
        reply 200 OK "{\"name\":\"$who\",\"tags\":[\"administrator\"]}" ;;
    "PUT /api/users/"*)
        [ -n "$name" ] || reply 400 "Bad Request"
        pw=$(printf '%s' "$body" | sed -n 's/.*"password"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p')
        [ -n "$pw" ] || reply 400 "Bad Request"
        { grep -v "^$name:" "$USERS"; printf '%s:%s\n' "$name" "$pw"; } > "$USERS.new"
        mv "$USERS.new" "$USERS"
        reply 201 Created ;;
    "DELETE /api/users/"*)
        grep -q "^$name:" "$USERS" || reply 404 "Not Found"
        grep -v "^$name:" "$USERS" > "$USERS.new"; mv "$USERS.new" "$USERS"
        reply 204 "No Content" ;;
    "PUT /api/permissions/%2F/"*)
        grep -q "^$name:" "$USERS" || reply 400 "Bad Request"
        reply 201 Created ;;
    "PUT /api/vhost-limits/%2F/"*)
        value=$(printf '%s' "$body" | sed -n 's/.*"value"[[:space:]]*:[[:space:]]*\(-\{0,1\}[0-9]*\).*/\1/p')
        [ -n "$value" ] || reply 400 "Bad Request"
        echo "$name=$value" >> /run/warren/limits
        reply 204 "No Content" ;;
esac
reply 404 "Not Found"
