package app

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"github.com/clinicchat/clinicchat/services/audit/internal/domain"
	"github.com/clinicchat/clinicchat/services/platform/errs"
)

// Page sizes of ListAuditEvents.
const (
	DefaultPageSize = 50
	MaxPageSize     = 500
	exportBatch     = 500
)

// Page is one page of a listing.
type Page struct {
	Records []domain.Record // newest first
	// Integrity is each record's verdict, checked as the page was read.
	Integrity     []Integrity
	NextPageToken string // empty on the last page
}

var errBadPageToken = errs.InvalidArgument("The page token is not valid for this filter; start again without it")

// List returns the caller's practice's records matching filter, newest
// first (by time, then index).
func (a *App) List(ctx context.Context, filter string, pageSize int32, pageToken string) (Page, error) {
	who, err := authorize(ctx)
	if err != nil {
		return Page{}, err
	}
	f, err := domain.ParseFilter(filter)
	if err != nil {
		return Page{}, err
	}
	switch {
	case pageSize < 0:
		return Page{}, errs.InvalidArgument("page_size must not be negative")
	case pageSize == 0:
		pageSize = DefaultPageSize
	case pageSize > MaxPageSize:
		pageSize = MaxPageSize
	}
	fp := fingerprint(who.Practice, f)
	q := domain.ListQuery{Practice: who.Practice, Filter: f, Limit: int(pageSize) + 1}
	if pageToken != "" {
		c, err := decodeToken(pageToken, fp)
		if err != nil {
			return Page{}, err
		}
		q.After = &c
	}
	recs, err := a.repo.List(ctx, q)
	if err != nil {
		return Page{}, err
	}
	var p Page
	if len(recs) > int(pageSize) {
		recs = recs[:pageSize]
		last := recs[len(recs)-1]
		p.NextPageToken = encodeToken(domain.Cursor{TimeMicros: last.Time.UnixMicro(), Index: last.Index}, fp)
	}
	p.Records = recs
	if p.Integrity, err = a.integrity(ctx, who.Practice, recs); err != nil {
		return Page{}, err
	}
	return p, nil
}

// Export calls emit with every record of the caller's practice matching
// filter, oldest first, reading in batches, with its integrity verdict (as
// List gives, checked per batch).
func (a *App) Export(ctx context.Context, filter string, emit func(domain.Record, Integrity) error) error {
	who, err := authorize(ctx)
	if err != nil {
		return err
	}
	f, err := domain.ParseFilter(filter)
	if err != nil {
		return err
	}
	q := domain.ListQuery{Practice: who.Practice, Filter: f, Limit: exportBatch, Ascending: true}
	for {
		recs, err := a.repo.List(ctx, q)
		if err != nil {
			return err
		}
		verdicts, err := a.integrity(ctx, who.Practice, recs)
		if err != nil {
			return err
		}
		for i, r := range recs {
			if err := emit(r, verdicts[i]); err != nil {
				return err
			}
		}
		if len(recs) < exportBatch {
			return nil
		}
		last := recs[len(recs)-1]
		q.After = &domain.Cursor{TimeMicros: last.Time.UnixMicro(), Index: last.Index}
	}
}

// fingerprint ties a page token to its practice and filter.
func fingerprint(practice string, f domain.Filter) string {
	h := sha256.Sum256([]byte(practice + "\x00" + f.String()))
	return hex.EncodeToString(h[:8])
}

// Page tokens are opaque: base64url("v1.<time µs>.<index>.<fingerprint>").
func encodeToken(c domain.Cursor, fp string) string {
	return base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, "v1.%d.%d.%s", c.TimeMicros, c.Index, fp))
}

func decodeToken(tok, fp string) (domain.Cursor, error) {
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return domain.Cursor{}, errBadPageToken
	}
	parts := strings.Split(string(raw), ".")
	if len(parts) != 4 || parts[0] != "v1" || parts[3] != fp {
		return domain.Cursor{}, errBadPageToken
	}
	t, err1 := strconv.ParseInt(parts[1], 10, 64)
	i, err2 := strconv.ParseInt(parts[2], 10, 64)
	if err1 != nil || err2 != nil {
		return domain.Cursor{}, errBadPageToken
	}
	return domain.Cursor{TimeMicros: t, Index: i}, nil
}
