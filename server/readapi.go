package server

// The read API a product builds on: users by email and by IdP id, an
// organisation's users a page at a time, an organisation at a glance; and
// the OpenAPI document of /v1 (openapi.json).

import (
	_ "embed"
	"encoding/base64"
	"net/http"
	"strconv"

	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/storage"
)

// OpenAPI is the OpenAPI 3.1 document of /v1, served at GET /v1/openapi.json.
//
//go:embed openapi.json
var OpenAPI []byte

// handleOpenAPI serves the document without the token, to any Host: it
// describes the API, and holds nothing of the store.
func handleOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(OpenAPI)))
	_, _ = w.Write(OpenAPI)
}

func (s *Server) readRoutes(mux *router) {
	mux.HandleFunc("GET /v1/users", s.authed(s.handleFindUsers))
	mux.HandleFunc("GET /v1/organizations/{org}", s.authed(func(w http.ResponseWriter, r *http.Request) {
		o, err := s.st.Organization(r.PathValue("org"))
		if err != nil {
			s.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, o)
	}))
	mux.HandleFunc("GET /v1/organizations/{org}/users", s.authed(s.handleOrganizationUsers))
}

// handleFindUsers answers GET /v1/users?email= and ?idp_id=[&directory_id=]:
// the users found, 404 when none.
func (s *Server) handleFindUsers(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	email, idp, dir := q.Get("email"), q.Get("idp_id"), q.Get("directory_id")
	var (
		users []storage.UserView
		err   error
		what  string
	)
	switch {
	case email != "" && idp != "":
		err = badRequest("email and idp_id: give one of them")
	case email != "" && dir != "":
		err = badRequest("directory_id narrows an idp_id lookup only")
	case email != "":
		users, err = s.st.UsersByEmail(email)
		what = "no user with that email"
	case idp != "":
		users, err = s.st.UsersByIdpID(idp, dir)
		what = "no user with that idp_id"
		if dir != "" {
			what += " in directory " + strconv.Quote(dir)
		}
	default:
		err = badRequest("want email or idp_id (GET /v1/users/{id} for a user by id)")
	}
	if err == nil && len(users) == 0 {
		err = notFound(what)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"users": users})
}

// usersPage is GET /v1/organizations/{org}/users's answer.
type usersPage struct {
	Users []storage.UserView `json:"users"`
	// NextCursor, on every page but the last, is the cursor of the next.
	NextCursor string `json:"next_cursor,omitempty"`
}

// The cursor of a page is opaque to clients: the base64 (URL-safe, no
// padding) of the last user id of the page before.
func encodeCursor(lastID string) string { return base64.RawURLEncoding.EncodeToString([]byte(lastID)) }

func decodeCursor(c string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || len(b) == 0 {
		return "", badRequest("cursor: not a cursor this API gave")
	}
	return string(b), nil
}

func (s *Server) handleOrganizationUsers(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := storage.UserFilter{Badge: mapping.Badge(q.Get("badge")), State: q.Get("state")}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > storage.MaxPageLimit {
			s.fail(w, r, badRequest("limit: want a number from 1 to "+strconv.Itoa(storage.MaxPageLimit)))
			return
		}
		f.Limit = n
	}
	if v := q.Get("cursor"); v != "" {
		after, err := decodeCursor(v)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		f.After = after
	}
	page, err := s.st.OrganizationUsers(r.PathValue("org"), f)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := usersPage{Users: page.Users}
	if page.More && len(page.Users) > 0 {
		out.NextCursor = encodeCursor(page.Users[len(page.Users)-1].ID)
	}
	writeJSON(w, http.StatusOK, out)
}
