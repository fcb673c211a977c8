package events

import "testing"

// Shapes real directories send that the reference examples do not show.
func TestDecodeToleratesNullNestedShapes(t *testing.T) {
	for name, data := range map[string]string{
		"null custom_attributes":                    `{"id":"u","directory_id":"d","custom_attributes":null,"email":null,"emails":[{"primary":true,"value":"a@x.example"}]}`,
		"null state and idp_id":                     `{"id":"u","directory_id":"d","state":null,"idp_id":null,"email":"a@x.example"}`,
		"empty role, null roles[]":                  `{"id":"u","directory_id":"d","role":{},"roles":[null,{"slug":""}],"email":"a@x.example"}`,
		"custom_attributes.emails of another shape": `{"id":"u","directory_id":"d","custom_attributes":{"emails":"a@x.example"},"emails":{"value":"b"},"email":"a@x.example"}`,
	} {
		t.Run(name, func(t *testing.T) {
			ev, err := Decode([]byte(`{"id":"event_1","event":"dsync.user.updated","created_at":"2023-04-28 20:05:31.093","data":` + data + `}`))
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if ev.User.Email != "a@x.example" || ev.User.Roles != nil {
				t.Fatalf("user = %+v, want email a@x.example and no roles", ev.User)
			}
		})
	}
}
