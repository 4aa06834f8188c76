package telemetry_test

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/platform/telemetry"
)

func TestConfigFromEnv(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     map[string]string
		want    telemetry.Config
		wantErr string
	}{
		{name: "nothing set: off", env: nil, want: telemetry.Config{}},
		{name: "an endpoint turns it on", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},
			want: telemetry.Config{Enabled: true, Protocol: "http/protobuf"}},
		{name: "a traces endpoint too", env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"},
			want: telemetry.Config{Enabled: true, Protocol: "http/protobuf"}},
		{name: "otlp over grpc", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
			want: telemetry.Config{Enabled: true, Protocol: "grpc"}},
		{name: "the traces protocol wins", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
			"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, want: telemetry.Config{Enabled: true, Protocol: "http/protobuf"}},
		{name: "none", env: map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"},
			want: telemetry.Config{}},
		{name: "sdk disabled", env: map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"},
			want: telemetry.Config{}},
		{name: "unknown exporter", env: map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, wantErr: "only otlp or none"},
		{name: "unknown protocol", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
			wantErr: "want grpc or http/protobuf"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := telemetry.ConfigFromEnv(func(k string) string { return tc.env[k] })
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

// Off, nothing is instrumented and no trace context is made up.
func TestOffCostsNothing(t *testing.T) {
	require.False(t, telemetry.Enabled())
	require.Nil(t, telemetry.GRPCServerHandler())
	require.Empty(t, telemetry.GRPCDialOptions())
	require.Empty(t, telemetry.Traceparent(context.Background()))
	ctx := context.Background()
	got, end := telemetry.StartConsumer(ctx, nats.Header{telemetry.HeaderTraceparent: {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}, "c", "s")
	end(nil)
	require.Equal(t, ctx, got, "no span is started while tracing is off")
}

func TestTraceparentRoundTrip(t *testing.T) {
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	ctx, ok := telemetry.FromHeader(context.Background(), nats.Header{telemetry.HeaderTraceparent: {tp}})
	require.True(t, ok)
	require.Equal(t, tp, telemetry.Traceparent(ctx))
	_, ok = telemetry.FromHeader(context.Background(), nats.Header{telemetry.HeaderTraceparent: {"garbage"}})
	require.False(t, ok, "a malformed header is ignored")
	_, ok = telemetry.FromHeader(context.Background(), nil)
	require.False(t, ok)
}
