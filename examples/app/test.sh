#!/bin/sh
# The example's test suite: fails loudly if greet.sh misbehaves.
set -e
[ "$(./greet.sh)" = "Hello, world!" ] || { echo "FAIL: default greeting"; exit 1; }
[ "$(./greet.sh Dagger)" = "Hello, Dagger!" ] || { echo "FAIL: named greeting"; exit 1; }
echo "2 tests passed"
