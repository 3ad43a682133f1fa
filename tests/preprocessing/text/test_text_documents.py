"""preprocessing.text.documents: WikiText articles whole and once whatever the byte spans."""
from preprocessing.text.documents import wikitext_articles


def test_wikitext_articles_whatever_the_spans(tmp_path, wiki_text):
    f = tmp_path / "wiki.train.tokens"
    f.write_bytes(wiki_text.encode())
    size = f.stat().st_size
    whole = [t.decode() for _, t in wikitext_articles(str(f), 0, size)]
    assert [t.splitlines()[0].strip() for t in whole] == [
        "= Valkyria Chronicles =", "= Tower Building =", "= Third ="]
    assert "= = Gameplay = =" in whole[0] and "1 @,@ 000" in whole[0]
    # cut into spans of any width: every article exactly once, whole, in order
    for step in (1, 7, 30, 64, size):
        parts = [t.decode() for a in range(0, size, step) for _, t in wikitext_articles(str(f), a, min(a + step, size))]
        assert parts == whole, step
