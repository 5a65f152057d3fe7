//go:build tools

// Package tools pins the fortio load generator built by hack/cluster/build.sh.
package tools

import _ "fortio.org/fortio"
