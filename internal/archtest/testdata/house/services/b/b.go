// Package b imports the gateway: forbidden.
package b

import _ "example.com/house/gateway"
