// Package leak imports a service's package: forbidden.
package leak

import _ "example.com/house/services/a"
