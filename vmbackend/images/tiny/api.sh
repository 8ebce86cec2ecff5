#!/bin/sh
# A tiny stand-in for RabbitMQ's management HTTP API (the endpoints Warren uses), one request per
# connection, run by `nc -ll -e`. Users live in /run/warren/users as "name:password" lines.
# GET  /api/overview                        any valid user -> 200 JSON
# GET  /api/whoami                          any valid user -> 200 JSON
# PUT  /api/users/NAME  {"password": ...}   create/replace a user
# DELETE /api/users/NAME                    remove a user
# PUT  /api/permissions/%2F/NAME            accepted (204)
# PUT  /api/vhost-limits/%2F/NAME {"value": N}   stored in /run/warren/limits
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
case "$method $path" in
    "GET /api/overview")
        reply 200 OK "{\"management_version\":\"tiny\",\"cluster_name\":\"rabbit@$(hostname)\",\"node\":\"rabbit@$(hostname)\",\"user\":\"$who\"}" ;;
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
