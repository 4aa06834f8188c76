package domain_test

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/clinicchat/clinicchat/services/audit/internal/domain"
)

func TestParseFilter(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		in   string
		want []domain.Cond
	}{
		{"", nil},
		{"   ", nil},
		{`actor="users/u"`, []domain.Cond{{Field: domain.FieldActor, Op: domain.OpEq, Value: "users/u"}}},
		{`action = "message.send"`, []domain.Cond{{Field: domain.FieldAction, Op: domain.OpEq, Value: "message.send"}}},
		{`resource="conversations/c"`, []domain.Cond{{Field: domain.FieldResource, Op: domain.OpEq, Value: "conversations/c"}}},
		{`resource="conversations/c/"`, []domain.Cond{{Field: domain.FieldResource, Op: domain.OpEq, Value: "conversations/c"}}},
		{`outcome="DENIED"`, []domain.Cond{{Field: domain.FieldOutcome, Op: domain.OpEq, Value: "DENIED"}}},
		{`outcome=ALLOWED`, []domain.Cond{{Field: domain.FieldOutcome, Op: domain.OpEq, Value: "ALLOWED"}}},
		{`actor=users/u`, []domain.Cond{{Field: domain.FieldActor, Op: domain.OpEq, Value: "users/u"}}},
		{`actor="a \"b\" \\c"`, []domain.Cond{{Field: domain.FieldActor, Op: domain.OpEq, Value: `a "b" \c`}}},
		{`time>="2026-01-02T03:04:05Z"`, []domain.Cond{{Field: domain.FieldTime, Op: domain.OpGE, Time: t0}}},
		{`time > "2026-01-02T04:04:05+01:00"`, []domain.Cond{{Field: domain.FieldTime, Op: domain.OpGT, Time: t0}}},
		{`time<"2026-01-02T03:04:05Z"`, []domain.Cond{{Field: domain.FieldTime, Op: domain.OpLT, Time: t0}}},
		{`time<="2026-01-02T03:04:05.000Z"`, []domain.Cond{{Field: domain.FieldTime, Op: domain.OpLE, Time: t0}}},
		{
			`actor="users/u" AND action="message.send" AND resource="conversations/c" AND outcome="DENIED" AND time>="2026-01-02T03:04:05Z" AND time<"2026-01-02T03:04:05Z"`,
			[]domain.Cond{
				{Field: domain.FieldActor, Op: domain.OpEq, Value: "users/u"},
				{Field: domain.FieldAction, Op: domain.OpEq, Value: "message.send"},
				{Field: domain.FieldResource, Op: domain.OpEq, Value: "conversations/c"},
				{Field: domain.FieldOutcome, Op: domain.OpEq, Value: "DENIED"},
				{Field: domain.FieldTime, Op: domain.OpGE, Time: t0},
				{Field: domain.FieldTime, Op: domain.OpLT, Time: t0},
			},
		},
		{"  actor=\"users/u\"\tAND\naction=\"x\"  ", []domain.Cond{
			{Field: domain.FieldActor, Op: domain.OpEq, Value: "users/u"},
			{Field: domain.FieldAction, Op: domain.OpEq, Value: "x"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			f, err := domain.ParseFilter(tt.in)
			require.NoError(t, err)
			require.Equal(t, tt.want, f.Conds)
			// The canonical form parses back to the same filter.
			again, err := domain.ParseFilter(f.String())
			require.NoError(t, err)
			require.Equal(t, f.String(), again.String())
		})
	}
}

func TestParseFilterErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		message string // part of the error message
	}{
		{`foo="x"`, `unknown field "foo"`},
		{`Actor="x"`, `unknown field "Actor"`},
		{`actor`, `expected an operator after actor`},
		{`actor=`, `expected a value`},
		{`actor=""`, `actor needs a value`},
		{`actor!="x"`, `operator != is not supported`},
		{`actor:"x"`, `operator : is not supported`},
		{`actor>"x"`, `actor takes =`},
		{`time="2026-01-02T03:04:05Z"`, `time takes >=, >, <= or <`},
		{`time>="yesterday"`, `RFC 3339`},
		{`time>="2026-01-02"`, `RFC 3339`},
		{`outcome="denied"`, `outcome is ALLOWED or DENIED`},
		{`resource=""`, `resource needs a resource name`},
		{`actor="x" OR actor="y"`, `OR is not supported`},
		{`actor="x" and actor="y"`, `write AND in capitals`},
		{`actor="x" actor="y"`, `expected AND`},
		{`actor="x"AND action="y"`, `expected a space and AND`},
		{`actor="x" AND`, `expected a condition after AND`},
		{`actor="x" AND `, `expected a condition after AND`},
		{`NOT actor="x"`, `found NOT`},
		{`-actor="x"`, `negation are not supported`},
		{`(actor="x")`, `parentheses`},
		{`actor="x`, `is not closed`},
		{`="x"`, `expected a field name`},
		{strings.Repeat("a", 5000), `longer than`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			_, err := domain.ParseFilter(tt.in)
			require.Error(t, err)
			st, ok := status.FromError(err)
			require.True(t, ok)
			require.Equal(t, codes.InvalidArgument, st.Code())
			require.Contains(t, st.Message(), tt.message)
			require.True(t, strings.HasPrefix(st.Message(), "Invalid filter: "), st.Message())
		})
	}
}

func TestFilterMatch(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	r := domain.Record{Entry: domain.Entry{
		Time: t0, Actor: "users/u", Action: "message.send", Resource: "conversations/c/messages/m", Outcome: domain.OutcomeDenied,
	}}
	tests := []struct {
		filter string
		want   bool
	}{
		{``, true},
		{`actor="users/u"`, true},
		{`actor="users/v"`, false},
		{`resource="conversations/c"`, true},
		{`resource="conversations/c/messages/m"`, true},
		{`resource="conversations/c/messages"`, true},
		{`resource="conversations/c2"`, false},
		{`resource="conversations"`, true},
		{`resource="conversations/c/messages/m2"`, false},
		{`outcome="DENIED" AND action="message.send"`, true},
		{`outcome="ALLOWED"`, false},
		{`time>="2026-01-02T03:04:05Z"`, true},
		{`time>"2026-01-02T03:04:05Z"`, false},
		{`time<="2026-01-02T03:04:05Z"`, true},
		{`time<"2026-01-02T03:04:05Z"`, false},
		{`actor="users/u" AND actor="users/v"`, false},
	}
	for _, tt := range tests {
		f, err := domain.ParseFilter(tt.filter)
		require.NoError(t, err)
		require.Equal(t, tt.want, f.Match(r), tt.filter)
	}
}
