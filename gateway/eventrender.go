package gateway

import (
	"time"

	"google.golang.org/protobuf/proto"

	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	"github.com/clinicchat/clinicchat/services/platform/policy/messageview"
)

// An event rendered as the caller of a stream may see it.

// renderMessage is e's message as the caller may see it, rendered once per
// viewer class (hub.go) and shared by every connection of the class: the
// encode does not multiply with connections. The class is the caller's own
// (messageview.Locked), so a locked message stays locked.
func (st *eventStream) renderMessage(e *event) ([]byte, error) {
	now, window := time.Now(), st.s.cfg.StepUpWindow
	class := viewUnlocked
	if messageview.Locked(e.message, st.id, now, window) {
		class = viewLocked
	}
	v := &e.views[class]
	v.once.Do(func() {
		if e.pc != nil {
			e.pc.rendered.Add(1)
		}
		m := e.message
		if e.raw != nil {
			// Rendered from the event's bytes as ForViewer's view of the
			// class (wireView), or, for a shape that is not read there,
			// unmarshalled and rendered as below.
			if v.data = st.s.renderWire(e.raw, class == viewLocked); v.data != nil {
				return
			}
			m = &deliveryv1.Message{}
			if v.err = proto.Unmarshal(e.raw, m); v.err != nil {
				return
			}
		}
		// ForViewer depends on the viewer only through Locked, which is
		// this class for the caller at now. Unlocked, it is a copy of the
		// message with locked=false: the event's own message when that
		// already holds (it is never modified), without the copy.
		if class == viewLocked || m.GetLocked() {
			m = messageview.ForViewer(m, st.id, now, window)
		}
		v.data, v.err = st.s.render("message", m)
	})
	if v.err != nil || v.data == nil {
		return nil, errRender
	}
	return v.data, nil
}

// renderWire is render("message", …) of a deliveryv1.Message encoded as
// raw, as messageview.Apply leaves it for a viewer it is locked for or not
// (appendWireJSON); nil when appendWireJSON does not read it.
func (s *Server) renderWire(raw []byte, locked bool) []byte {
	hint := &s.renderHint[0]
	out := make([]byte, 0, max(512, hint.Load()+128))
	out = append(out, `{"message":`...)
	out, ok := appendWireJSON(out, (*deliveryv1.Message)(nil).ProtoReflect().Descriptor(), raw, wireView{message: true, locked: locked})
	if !ok {
		return nil
	}
	out = append(out, '}')
	hint.Store(int64(min(len(out), 64<<10)))
	return out
}

// render is {"<field>": <resource>} with the REST API's JSON options,
// encoded straight after the prefix (what s.marshaler.Marshal writes for a
// proto message, without its two copies), in a buffer the size of the
// field's last rendering (renderHint): one allocation, no growth.
func (s *Server) render(field string, m proto.Message) ([]byte, error) {
	hint := &s.renderHint[0]
	if field == "conversation" {
		hint = &s.renderHint[1]
	}
	out := make([]byte, 0, max(512, hint.Load()+128))
	out = append(out, `{"`...)
	out = append(out, field...)
	out = append(out, `":`...)
	if b, ok := appendJSON(out, m.ProtoReflect()); ok {
		b = append(b, '}')
		hint.Store(int64(min(len(b), 64<<10)))
		return b, nil
	}
	out, err := s.marshaler.MarshalOptions.MarshalAppend(out, m) // out: still just the prefix
	if err != nil {
		return nil, err
	}
	return append(out, '}'), nil
}
