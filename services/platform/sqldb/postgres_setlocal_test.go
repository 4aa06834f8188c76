package sqldb_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

func planCacheMode(ctx context.Context, q sqldb.Querier) (string, error) {
	var v string
	err := q.QueryRow(ctx, `SELECT current_setting(?)`, "plan_cache_mode").Scan(&v)
	return v, err
}

// SetLocal goes ahead of the transaction's next statement in its network
// write, with BEGIN when it is the first: a write of SetLocal and a query
// is one network write before its COMMIT. The setting holds for the rest
// of the transaction only (the pool's one connection is back to its own).
func TestPostgresSetLocalTravelsWithTheNextStatement(t *testing.T) {
	db := openPG(t, "")
	ctx := context.Background()
	for round := range 2 { // the first round prepares the statements
		var writes int
		var first, later string
		require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
			w0 := sqldb.NetworkWrites(tx)
			if err := tx.SetLocal(ctx, "plan_cache_mode", "force_generic_plan"); err != nil {
				return err
			}
			var err error
			if first, err = planCacheMode(ctx, tx); err != nil {
				return err
			}
			writes = sqldb.NetworkWrites(tx) - w0
			// Later in the transaction, after a statement.
			if err := tx.SetLocal(ctx, "plan_cache_mode", "force_custom_plan"); err != nil {
				return err
			}
			later, err = planCacheMode(ctx, tx)
			return err
		}))
		require.Equal(t, "force_generic_plan", first)
		require.Equal(t, "force_custom_plan", later)
		if round == 1 {
			require.Equal(t, 1, writes, "BEGIN, SET LOCAL and the query in one write")
		}
		v, err := planCacheMode(ctx, db)
		require.NoError(t, err)
		require.Equal(t, "auto", v, "transaction-local")
	}

	// Ahead of an Exec without arguments (simple protocol: on its own),
	// and ahead of statements held back for COMMIT.
	require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
		if err := tx.SetLocal(ctx, "application_name", "it's-simple"); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO kv (k, i, v) SELECT 'simple', 1, current_setting('application_name')`); err != nil {
			return err
		}
		if err := tx.SetLocal(ctx, "application_name", "held"); err != nil {
			return err
		}
		return tx.ExecAtCommit(ctx, `INSERT INTO kv (k, i, v) SELECT ?, 1, current_setting('application_name')`, "held")
	}))
	require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
		if err := tx.SetLocal(ctx, "application_name", "held-alone"); err != nil {
			return err
		}
		return tx.ExecAtCommit(ctx, `INSERT INTO kv (k, i, v) SELECT ?, 1, current_setting('application_name')`, "held-alone")
	}))
	for k, want := range map[string]string{"simple": "1:it's-simple", "held": "1:held", "held-alone": "1:held-alone"} {
		require.Equal(t, []string{want}, kvRows(t, db, k))
	}

	// A statement that never reached the network (its context had ended)
	// took nothing with it: the next one carries BEGIN and the setting.
	require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
		if err := tx.SetLocal(ctx, "plan_cache_mode", "force_generic_plan"); err != nil {
			return err
		}
		done, cancel := context.WithCancel(ctx)
		cancel()
		_, err := planCacheMode(done, tx)
		require.ErrorIs(t, err, context.Canceled)
		v, err := planCacheMode(ctx, tx)
		require.Equal(t, "force_generic_plan", v)
		return err
	}))
	requireUsable(t, db, "after")
}

// A bad value fails the statement it went with, and the write; a bad name
// is refused at once.
func TestPostgresSetLocalErrors(t *testing.T) {
	db := openPG(t, "")
	ctx := context.Background()
	err := db.Write(ctx, func(tx *sqldb.Tx) error {
		if err := tx.SetLocal(ctx, "plan_cache_mode", "sometimes"); err != nil {
			return err
		}
		return insertKV(ctx, tx, "bad-value", 1)
	})
	require.Equal(t, "22023", sqlState(err), "invalid_parameter_value: %v", err)
	require.Empty(t, kvKeys(t, db))
	requireUsable(t, db, "after-bad-value")

	err = db.Write(ctx, func(tx *sqldb.Tx) error { return tx.SetLocal(ctx, "plan_cache_mode = 'x'; --", "y") })
	require.ErrorContains(t, err, "bad setting name")
	requireUsable(t, db, "after-bad-name")
}

// Where BEGIN goes on its own, SetLocal runs at once; SQLite has no such
// settings.
func TestSetLocalElsewhere(t *testing.T) {
	ctx := context.Background()
	db := openPG(t, "&default_query_exec_mode=exec")
	require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
		if err := tx.SetLocal(ctx, "plan_cache_mode", "force_generic_plan"); err != nil {
			return err
		}
		v, err := planCacheMode(ctx, tx)
		require.Equal(t, "force_generic_plan", v)
		return err
	}))
	lite := testkit.OpenDB(t, testkit.Backends()[0])
	err := lite.Write(ctx, func(tx *sqldb.Tx) error { return tx.SetLocal(ctx, "plan_cache_mode", "auto") })
	require.ErrorContains(t, err, "PostgreSQL")
}
