// Package demoprovider is the ArtifactProvider that ships with the
// all-in-one: a stand-in for a practice management system that answers with
// plausible appointments, invoices and prescriptions for any patient, derived
// deterministically from the patient id. A real practice system implements
// clinicchat.artifact.v1.ArtifactProviderService itself.
package demoprovider

import (
	"context"
	"crypto/subtle"
	"fmt"
	"hash/fnv"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	artifactv1 "github.com/clinicchat/clinicchat/proto/clinicchat/artifact/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/errs"
	"github.com/clinicchat/clinicchat/services/platform/ids"
)

// Provider implements artifactv1.ArtifactProviderServiceServer.
type Provider struct {
	artifactv1.UnimplementedArtifactProviderServiceServer
	// Now anchors the generated dates (default time.Now).
	Now func() time.Time
}

var (
	procedures = []string{"Cleaning", "Check-up and X-rays", "Filling", "Crown fitting", "Whitening consultation", "Root canal follow-up"}
	dentists   = []string{"Dr. Lee", "Dr. Patel", "Dr. Okafor", "Dr. García"}
	drugs      = []string{"Amoxicillin 500 mg", "Ibuprofen 600 mg", "Chlorhexidine rinse 0.12%", "Fluoride toothpaste 5000 ppm"}
)

func (p *Provider) records(patient string) []*artifactv1.ArtifactRecord {
	now := time.Now
	if p.Now != nil {
		now = p.Now
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(patient))
	seed := int(h.Sum32())
	day := now().UTC().Truncate(24 * time.Hour)
	rec := func(t artifactv1.Artifact_Type, ref string, at time.Time, title, subtitle, amount string) *artifactv1.ArtifactRecord {
		return &artifactv1.ArtifactRecord{Patient: patient, Time: timestamppb.New(at), Artifact: &artifactv1.Artifact{
			Type: t, Ref: ref, Preview: &artifactv1.ArtifactPreview{Title: title, Subtitle: subtitle, Date: at.Format("2006-01-02"), Amount: amount}}}
	}
	var out []*artifactv1.ArtifactRecord
	for i := range 3 {
		at := day.AddDate(0, 0, 14-45*i+seed%7).Add(time.Duration(9+(seed+i)%8) * time.Hour)
		out = append(out, rec(artifactv1.Artifact_APPOINTMENT, fmt.Sprintf("appt-%d", 1001+i),
			at, procedures[(seed+i)%len(procedures)]+" with "+dentists[(seed+i)%len(dentists)],
			fmt.Sprintf("%s, room %d, %d minutes", at.Format("Mon 2 Jan 15:04"), 1+(seed+i)%4, 30+15*((seed+i)%3)), ""))
	}
	for i := range 2 {
		at := day.AddDate(0, 0, -10-40*i)
		cents := 4500 + (seed+i*977)%30000
		out = append(out, rec(artifactv1.Artifact_INVOICE, fmt.Sprintf("inv-%d", 2001+i), at,
			fmt.Sprintf("Invoice INV-%d", 2001+i), procedures[(seed+i+1)%len(procedures)],
			fmt.Sprintf("$%d.%02d", cents/100, cents%100)))
	}
	for i := range 2 {
		at := day.AddDate(0, 0, -5-60*i)
		out = append(out, rec(artifactv1.Artifact_PRESCRIPTION, fmt.Sprintf("rx-%d", 3001+i), at,
			drugs[(seed+i)%len(drugs)], "Prescribed by "+dentists[(seed+i+2)%len(dentists)], ""))
	}
	return out
}

// authorize accepts the clinicchat service (its own credential, checked by
// the server's ServiceVerifier), which has authorized the user and names the
// practice and patient in the request. A caller whose identity is scoped to
// one practice may ask about that practice only.
func authorize(ctx context.Context, practice, patient string) error {
	who, ok := auth.FromContext(ctx)
	if !ok || !who.IsSystem() {
		return errs.Unauthenticated("Only the clinicchat service may call the artifact provider")
	}
	if practice == "" {
		return errs.InvalidArgument("practice is required")
	}
	if who.Practice != "" && who.Practice != practice {
		return errs.NotFound("Patient not found")
	}
	if _, ok := ids.Parse(patient, "patients"); !ok {
		return errs.InvalidArgument("patient must look like patients/{patient}")
	}
	return nil
}

// ListArtifactRecords implements the RPC: newest first.
func (p *Provider) ListArtifactRecords(ctx context.Context, r *artifactv1.ListArtifactRecordsRequest) (*artifactv1.ListArtifactRecordsResponse, error) {
	if err := authorize(ctx, r.GetPractice(), r.GetPatient()); err != nil {
		return nil, err
	}
	limit := int(r.GetPageSize())
	if limit <= 0 {
		limit = 10
	}
	all := p.records(r.GetPatient())
	out := &artifactv1.ListArtifactRecordsResponse{}
	for _, rec := range all {
		if r.GetType() != artifactv1.Artifact_TYPE_UNSPECIFIED && rec.GetArtifact().GetType() != r.GetType() {
			continue
		}
		out.Records = append(out.Records, rec)
	}
	sortNewestFirst(out.Records)
	if len(out.Records) > limit {
		out.Records = out.Records[:limit]
	}
	return out, nil
}

// GetArtifactRecord implements the RPC.
func (p *Provider) GetArtifactRecord(ctx context.Context, r *artifactv1.GetArtifactRecordRequest) (*artifactv1.ArtifactRecord, error) {
	if err := authorize(ctx, r.GetPractice(), r.GetPatient()); err != nil {
		return nil, err
	}
	for _, rec := range p.records(r.GetPatient()) {
		if rec.GetArtifact().GetType() == r.GetType() && rec.GetArtifact().GetRef() == r.GetRef() {
			return rec, nil
		}
	}
	return nil, errs.NotFound("No such record for this patient")
}

// ServiceVerifier accepts exactly one bearer token, the clinicchat
// service's credential for this provider, as a system identity bound to no
// practice. End users' tokens are refused.
type ServiceVerifier struct{ Token string }

// Verify implements auth.Verifier.
func (v ServiceVerifier) Verify(_ context.Context, token string) (auth.Identity, error) {
	if v.Token == "" || subtle.ConstantTimeCompare([]byte(token), []byte(v.Token)) != 1 {
		return auth.Identity{}, auth.ErrInvalidToken
	}
	return auth.Identity{Subject: "clinicchat", Role: auth.RoleSystem}, nil
}

func sortNewestFirst(rs []*artifactv1.ArtifactRecord) {
	for i := 1; i < len(rs); i++ {
		for j := i; j > 0 && rs[j].GetTime().AsTime().After(rs[j-1].GetTime().AsTime()); j-- {
			rs[j], rs[j-1] = rs[j-1], rs[j]
		}
	}
}
