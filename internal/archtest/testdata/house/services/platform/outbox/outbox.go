// Package outbox is an adapter.
package outbox

import _ "database/sql"
