package domain

// SearchQuery asks for patients of a practice by name.
//
// A patient matches when every query word is a prefix of some indexed word of
// their name (see SplitName). Results come in tiers, best first, and by name
// (the folded name, then id) within a tier:
//
//	tier 0: the whole name is the query (folded words equal, in order);
//	tier 1: every query word is a whole word of the name;
//	tier 2: the others (every query word starts a word of the name).
//
// With no words, every patient matches, by name, in tier 0.
type SearchQuery struct {
	// Practice is the tenant searched.
	Practice string
	// Words are the folded query words (QueryWords), without duplicates.
	Words []string
	// IncludeIneligible also returns patients who cannot be chatted with.
	IncludeIneligible bool
	// Limit is how many patients to return at most.
	Limit int
	// After, when set, continues after this position.
	After *Cursor
}

// Cursor is a position in a search's results: the tier and the id of the last
// patient returned. The store finds the patient's name key itself, so a page
// token never carries a name.
type Cursor struct {
	Tier int
	ID   string
}

// SearchHit is one search result.
type SearchHit struct {
	Patient Patient
	// Tier is the match tier (SearchQuery).
	Tier int
}
