// Package events builds the EventMeta that every published event starts with.
package events

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// Meta returns metadata for an action by who on resource, with a fresh id
// (time-ordered: see ids.NewOrdered).
func Meta(who auth.Identity, action, resource string, at time.Time) *typev1.EventMeta {
	return &typev1.EventMeta{
		Id:        ids.NewOrdered(at),
		Time:      timestamppb.New(at),
		Practice:  who.Practice,
		Actor:     who.Principal(),
		ActorRole: who.Role,
		Action:    action,
		Resource:  resource,
		Outcome:   typev1.EventMeta_ALLOWED,
	}
}

// Denied returns metadata for a refused attempt; detail is a reason code.
func Denied(who auth.Identity, action, resource, detail string, at time.Time) *typev1.EventMeta {
	m := Meta(who, action, resource, at)
	m.Outcome = typev1.EventMeta_DENIED
	m.Detail = detail
	return m
}

// System returns metadata for an action of the product itself (the archive
// sweeper, a consumer) in practice.
func System(practice, action, resource string, at time.Time) *typev1.EventMeta {
	return &typev1.EventMeta{
		Id:        ids.NewOrdered(at),
		Time:      timestamppb.New(at),
		Practice:  practice,
		Actor:     natsx.SystemActor,
		ActorRole: auth.RoleSystem,
		Action:    action,
		Resource:  resource,
		Outcome:   typev1.EventMeta_ALLOWED,
	}
}
