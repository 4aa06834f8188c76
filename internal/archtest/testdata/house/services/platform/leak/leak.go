// Package leak is platform code that imports a service: forbidden.
package leak

import _ "example.com/house/services/b"
