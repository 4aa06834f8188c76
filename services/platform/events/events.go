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
	return meta(ids.NewOrdered(at), at, who.Practice, who.Principal(), who.Role, action, resource)
}

// metaAlloc is an EventMeta with its time, in one allocation (the time
// lives as long as the meta that points to it).
type metaAlloc struct {
	meta typev1.EventMeta
	time timestamppb.Timestamp
}

func meta(id string, at time.Time, practice, actor, role, action, resource string) *typev1.EventMeta {
	a := new(metaAlloc)
	a.time.Seconds, a.time.Nanos = at.Unix(), int32(at.Nanosecond()) // as timestamppb.New
	m := &a.meta
	m.Id, m.Time, m.Practice, m.Actor, m.ActorRole = id, &a.time, practice, actor, role
	m.Action, m.Resource, m.Outcome = action, resource, typev1.EventMeta_ALLOWED
	return m
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
	return meta(ids.NewOrdered(at), at, practice, natsx.SystemActor, auth.RoleSystem, action, resource)
}
