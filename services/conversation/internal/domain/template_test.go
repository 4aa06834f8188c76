package domain_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/conversation/internal/domain"
)

func TestTemplateText(t *testing.T) {
	for _, tc := range []struct {
		text, wantErr string
	}{
		{"Hi {patient.firstName}, {staff.displayName} at {practice.name} here. {patient.displayName}", ""},
		{"Any other is refused: { are }", "Unknown placeholder { are }"},
		{"Hi {patient.lastName}", "Unknown placeholder {patient.lastName}"},
		{"Hi {}", "Unknown placeholder {}"},
		{"   ", "text is required"},
		{strings.Repeat("é", 2000), ""},
		{strings.Repeat("é", 2001), "at most 2000 characters"},
	} {
		err := domain.ValidateText(tc.text)
		if tc.wantErr == "" {
			require.NoError(t, err, tc.text)
		} else {
			require.ErrorContains(t, err, tc.wantErr)
		}
	}
}
