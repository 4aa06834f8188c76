package domain

import (
	"strings"
	"time"

	"github.com/clinicchat/clinicchat/services/platform/errs"
)

// Field is what a filter condition tests.
type Field string

// The fields a filter may name (SPEC.md, GET /v1/auditEvents).
const (
	FieldActor    Field = "actor"    // equality
	FieldAction   Field = "action"   // equality
	FieldResource Field = "resource" // the resource and everything under it
	FieldOutcome  Field = "outcome"  // ALLOWED or DENIED
	FieldTime     Field = "time"     // >=, >, <=, < an RFC 3339 time
)

// Op is a comparison.
type Op string

// Operators.
const (
	OpEq Op = "="
	OpGE Op = ">="
	OpGT Op = ">"
	OpLE Op = "<="
	OpLT Op = "<"
)

// Cond is one condition of a filter.
type Cond struct {
	Field Field
	Op    Op
	// Value is the literal for actor, action, resource (without a trailing
	// "/") and outcome.
	Value string
	// Time is the bound of a time condition (UTC).
	Time time.Time
}

// Filter is a conjunction of conditions; the empty filter matches everything.
type Filter struct {
	Conds []Cond
}

// maxFilterLen bounds the filter text.
const maxFilterLen = 4096

// ParseFilter parses the AIP-160 subset SPEC.md defines:
//
//	actor="users/u" AND action="message.send" AND resource="conversations/c"
//	AND outcome="DENIED" AND time>="2026-01-01T00:00:00Z" AND time<"…"
//
// Values are double-quoted strings (with \" and \\ escapes) or bare words;
// conditions are joined by AND (upper case); a field may repeat. actor, action
// and outcome compare for equality; resource matches that resource and
// everything under it; time takes >=, >, <= or < an RFC 3339 time. Anything
// else fails with INVALID_ARGUMENT and a message saying what is wrong. The
// messages quote field names and positions, never values.
func ParseFilter(s string) (Filter, error) {
	if len(s) > maxFilterLen {
		return Filter{}, filterErr("it is longer than %d characters", maxFilterLen)
	}
	p := &filterParser{s: s}
	var f Filter
	p.skipSpace()
	if p.eof() {
		return f, nil
	}
	for {
		c, err := p.cond()
		if err != nil {
			return Filter{}, err
		}
		f.Conds = append(f.Conds, c)
		if !p.skipSpace() && !p.eof() {
			return Filter{}, filterErr("expected a space and AND after the condition ending at position %d", p.pos)
		}
		if p.eof() {
			return f, nil
		}
		at := p.pos
		switch w := p.word(); w {
		case "AND":
		case "OR", "NOT":
			return Filter{}, filterErr("%s is not supported (position %d): join conditions with AND", w, at+1)
		case "and":
			return Filter{}, filterErr("write AND in capitals (position %d)", at+1)
		default:
			return Filter{}, filterErr("expected AND at position %d", at+1)
		}
		if !p.skipSpace() || p.eof() {
			return Filter{}, filterErr("expected a condition after AND at position %d", at+1)
		}
	}
}

// String is the filter in canonical form; equal filters have equal strings.
func (f Filter) String() string {
	parts := make([]string, len(f.Conds))
	for i, c := range f.Conds {
		v := c.Value
		if c.Field == FieldTime {
			v = c.Time.UTC().Format(time.RFC3339Nano)
		}
		parts[i] = string(c.Field) + string(c.Op) + quote(v)
	}
	return strings.Join(parts, " AND ")
}

// quote writes v as the grammar reads it back: double quotes around it,
// with only \" and \\ escaped (strconv.Quote's \x00 would read as "x00").
func quote(v string) string {
	var b strings.Builder
	b.Grow(len(v) + 2)
	b.WriteByte('"')
	for i := 0; i < len(v); i++ {
		if v[i] == '"' || v[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(v[i])
	}
	b.WriteByte('"')
	return b.String()
}

// Match reports whether r satisfies every condition (the reference semantics
// the store's SQL implements).
func (f Filter) Match(r Record) bool {
	for _, c := range f.Conds {
		if !c.Match(r) {
			return false
		}
	}
	return true
}

// Match reports whether r satisfies c.
func (c Cond) Match(r Record) bool {
	switch c.Field {
	case FieldActor:
		return r.Actor == c.Value
	case FieldAction:
		return r.Action == c.Value
	case FieldOutcome:
		return string(r.Outcome) == c.Value
	case FieldResource:
		return r.Resource == c.Value || strings.HasPrefix(r.Resource, c.Value+"/")
	case FieldTime:
		t, b := r.Time.UnixMicro(), c.Time.UnixMicro()
		switch c.Op {
		case OpGE:
			return t >= b
		case OpGT:
			return t > b
		case OpLE:
			return t <= b
		case OpLT:
			return t < b
		}
	}
	return false
}

func filterErr(format string, args ...any) error {
	return errs.InvalidArgument("Invalid filter: "+format+". Example: actor=\"users/u\" AND time>=\"2026-01-01T00:00:00Z\"", args...)
}

type filterParser struct {
	s   string
	pos int
}

func (p *filterParser) eof() bool { return p.pos >= len(p.s) }

// skipSpace skips blanks and reports whether there were any.
func (p *filterParser) skipSpace() bool {
	start := p.pos
	for !p.eof() && (p.s[p.pos] == ' ' || p.s[p.pos] == '\t' || p.s[p.pos] == '\n' || p.s[p.pos] == '\r') {
		p.pos++
	}
	return p.pos > start
}

// word reads a run of letters, digits, '_' and '.'.
func (p *filterParser) word() string {
	start := p.pos
	for !p.eof() {
		c := p.s[p.pos]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' {
			p.pos++
			continue
		}
		break
	}
	return p.s[start:p.pos]
}

func (p *filterParser) op() string {
	for _, op := range []string{">=", "<=", "!=", "=", ">", "<", ":"} {
		if strings.HasPrefix(p.s[p.pos:], op) {
			p.pos += len(op)
			return op
		}
	}
	return ""
}

func (p *filterParser) cond() (Cond, error) {
	at := p.pos
	if c := p.s[p.pos]; c == '(' || c == '-' {
		return Cond{}, filterErr("parentheses and negation are not supported (position %d): join conditions with AND", at+1)
	}
	name := p.word()
	switch name {
	case "":
		return Cond{}, filterErr("expected a field name at position %d", at+1)
	case "NOT", "OR", "AND":
		return Cond{}, filterErr("expected a field name at position %d, found %s", at+1, name)
	}
	field := Field(name)
	switch field {
	case FieldActor, FieldAction, FieldResource, FieldOutcome, FieldTime:
	default:
		if len(name) > 40 {
			name = name[:40] + "…"
		}
		return Cond{}, filterErr("unknown field %q at position %d: filter on actor, action, resource, outcome or time", name, at+1)
	}
	p.skipSpace()
	opAt := p.pos
	op := Op(p.op())
	switch {
	case op == "":
		return Cond{}, filterErr("expected an operator after %s at position %d", name, opAt+1)
	case op == "!=" || op == ":":
		return Cond{}, filterErr("operator %s is not supported (position %d)", op, opAt+1)
	case field == FieldTime && op == OpEq:
		return Cond{}, filterErr("time takes >=, >, <= or < (position %d)", opAt+1)
	case field != FieldTime && op != OpEq:
		return Cond{}, filterErr("%s takes = (position %d)", name, opAt+1)
	}
	p.skipSpace()
	valAt := p.pos
	val, err := p.value()
	if err != nil {
		return Cond{}, err
	}
	c := Cond{Field: field, Op: op, Value: val}
	switch field {
	case FieldOutcome:
		if val != string(OutcomeAllowed) && val != string(OutcomeDenied) {
			return Cond{}, filterErr("outcome is ALLOWED or DENIED (position %d)", valAt+1)
		}
	case FieldTime:
		t, err := time.Parse(time.RFC3339Nano, val)
		if err != nil {
			return Cond{}, filterErr("time needs an RFC 3339 time such as \"2026-01-02T15:04:05Z\" (position %d)", valAt+1)
		}
		c.Time, c.Value = t.UTC(), ""
	case FieldResource:
		c.Value = strings.TrimSuffix(val, "/")
		if c.Value == "" {
			return Cond{}, filterErr("resource needs a resource name such as \"conversations/c\" (position %d)", valAt+1)
		}
	default:
		if val == "" {
			return Cond{}, filterErr("%s needs a value (position %d)", name, valAt+1)
		}
	}
	return c, nil
}

// value reads a quoted string or a bare word.
func (p *filterParser) value() (string, error) {
	at := p.pos
	if p.eof() {
		return "", filterErr("expected a value at position %d", at+1)
	}
	if q := p.s[p.pos]; q == '"' || q == '\'' {
		p.pos++
		var b strings.Builder
		for !p.eof() {
			c := p.s[p.pos]
			p.pos++
			switch {
			case c == q:
				return b.String(), nil
			case c == '\\':
				if p.eof() {
					break
				}
				b.WriteByte(p.s[p.pos])
				p.pos++
			default:
				b.WriteByte(c)
			}
		}
		return "", filterErr("the string starting at position %d is not closed", at+1)
	}
	for !p.eof() {
		c := p.s[p.pos]
		if c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '(' || c == ')' || c == '"' || c == '\'' {
			break
		}
		p.pos++
	}
	if p.pos == at {
		return "", filterErr("expected a value at position %d", at+1)
	}
	return p.s[at:p.pos], nil
}
