#!/bin/bash
# The compose health check's command. The cached jars have no kafka-tools, so this stand-in only
# checks that the listener accepts connections: the broker opens it once it is unfenced and running.
set -euo pipefail
server=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bootstrap-server) server="$2"; shift 2 ;;
    --bootstrap-server=*) server="${1#*=}"; shift ;;
    *) shift ;;
  esac
done
server="${server%%,*}"
exec 3<>"/dev/tcp/${server%:*}/${server##*:}"
