// Package a imports another service: forbidden.
package a

import _ "example.com/house/services/b"
