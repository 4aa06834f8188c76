// Package errs is allowed in a domain; its own imports are not followed.
package errs

import _ "database/sql"
