#!/bin/sh
echo "starting up"
echo "fatal: missing configuration DATABASE_URL" >&2
exit 1
