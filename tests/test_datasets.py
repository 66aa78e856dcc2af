"""make_sessions and the readers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import make_pipeline

from sessionrec.datasets import (
    make_sessions,
    read_diginetica_views,
    read_gru4rec_tsv,
    read_lastfm_1k,
    read_movielens_movies,
    read_movielens_ratings,
    read_movielens_tags,
    read_retailrocket_events,
    read_yoochoose_clicks,
)
from sessionrec.preprocessing import ItemSupportFilter, SessionLengthFilter

from .conftest import RSC15, SHARED_DATA


def test_make_sessions_shape_and_determinism():
    a = make_sessions(n_sessions=200, n_items=40, n_users=10, random_state=3)
    b = make_sessions(n_sessions=200, n_items=40, n_users=10, random_state=3)
    assert a.equals(b)
    assert list(a.columns) == ["UserId", "SessionId", "ItemId", "Time"]
    assert a["SessionId"].nunique() == 200
    assert a.groupby("SessionId").size().min() >= 2
    assert a.groupby("SessionId")["UserId"].nunique().max() == 1
    assert a["ItemId"].between(0, 39).all()
    assert (a.groupby("SessionId")["Time"].diff().dropna() > 0).all()


def test_planted_transitions_are_followed():
    events = make_sessions(n_sessions=500, n_items=100, transition_strength=1.0,
                           n_successors=1, random_state=0)
    # With one successor and strength 1, every session is a deterministic chain.
    nxt = events.groupby("SessionId")["ItemId"].shift(-1)
    pairs = events.assign(nxt=nxt).dropna()
    assert (pairs.groupby("ItemId")["nxt"].nunique() == 1).all()


def test_item_features_carry_the_topic():
    events, features = make_sessions(n_sessions=50, n_items=30, n_topics=3,
                                     feature_noise=0.0, return_item_features=True,
                                     random_state=0)
    assert features.shape == (30, 3)
    assert np.allclose(features.sum(axis=1), 1.0)


def test_make_sessions_rejects_bad_parameters():
    with pytest.raises(ValueError, match="mean_length"):
        make_sessions(mean_length=1.5)
    with pytest.raises(ValueError, match="transition_strength"):
        make_sessions(transition_strength=2.0)
    with pytest.raises(TypeError, match="n_items"):
        make_sessions(n_items=2.5)


# The counts table of ../shared/data/rsc15-100k/MANIFEST.md: events, sessions, items.
RSC15_MANIFEST = {"train_full": (70_278, 17_794, 2_933), "train_tr": (53_254, 13_629, 2_873),
                  "train_valid": (16_539, 4_084, 2_029), "test": (13_568, 3_416, 1_771)}


@pytest.mark.realdata
@pytest.mark.parametrize("split", sorted(RSC15_MANIFEST))
def test_read_gru4rec_tsv_reproduces_the_manifest_counts(split):
    if not RSC15.is_dir():
        pytest.skip("real data not found")
    frame = read_gru4rec_tsv(RSC15 / f"yoochoose-clicks-100k_{split}.txt")
    assert (len(frame), frame["SessionId"].nunique(), frame["ItemId"].nunique()) == \
        RSC15_MANIFEST[split]
    assert frame.groupby("SessionId").size().min() == 2


def test_read_yoochoose_clicks_and_the_gru4rec_preparation(tmp_path):
    # A YOOCHOOSE-format sample, prepared as the GRU4Rec paper does: sessions >= 2 events,
    # items >= 5 events, sessions >= 2 again; as a Pipeline, and by hand with pandas.
    rng = np.random.default_rng(0)
    lines = []
    for session in range(1, 301):
        n = int(rng.integers(1, 6))
        for j in range(n):
            item = int(214500000 + rng.zipf(1.6) % 60)
            stamp = pd.Timestamp("2014-04-01T10:00:00Z") + pd.Timedelta(
                seconds=int(session) * 97 + 30 * j, milliseconds=int(rng.integers(0, 999)))
            lines.append(f"{session},{stamp.strftime('%Y-%m-%dT%H:%M:%S.%f')[:-3]}Z,{item},0")
    path = tmp_path / "yoochoose-clicks.dat"
    path.write_text("\n".join(lines) + "\n")
    clicks = read_yoochoose_clicks(path)
    assert list(clicks.columns) == ["SessionId", "ItemId", "Time", "Category"]
    assert len(clicks) == len(lines)
    first = lines[0].split(",")
    assert clicks["Time"].iloc[0] == pytest.approx(
        pd.Timestamp(first[1]).timestamp(), abs=1e-3)

    prep = make_pipeline(SessionLengthFilter(2), ItemSupportFilter(5), SessionLengthFilter(2))
    ours = prep.fit_transform(clicks)
    manual = clicks[clicks.groupby("SessionId")["ItemId"].transform("size") > 1]
    support = manual.groupby("ItemId").size()
    manual = manual[manual["ItemId"].isin(support[support >= 5].index)]
    manual = manual[manual.groupby("SessionId")["ItemId"].transform("size") >= 2]
    pd.testing.assert_frame_equal(ours, manual)
    assert 0 < len(ours) < len(clicks)


@pytest.mark.parametrize("header", ["sessionId;userId;itemId;timeframe;eventdate",
                                    "session_id;user_id;item_id;timeframe;eventdate"])
def test_read_diginetica_views(tmp_path, header):
    """The CIKM Cup release's header and the public sample's snake_case one."""
    path = tmp_path / "train-item-views.csv"
    path.write_text(f"{header}\n"
                    "1;NA;81766;526309;2016-05-09\n1;NA;31331;1031018;2016-05-09\n"
                    "2;278;32118;243569;2016-05-10\n")
    views = read_diginetica_views(path)
    assert list(views.columns) == ["SessionId", "UserId", "ItemId", "Time"]
    assert views["UserId"].isna().tolist() == [True, True, False]
    day = pd.Timestamp("2016-05-09").timestamp()
    assert views["Time"].tolist()[:2] == pytest.approx([day + 526.309, day + 1031.018])


def test_read_diginetica_views_names_missing_columns(tmp_path):
    path = tmp_path / "views.csv"
    path.write_text("session;item;timeframe;eventdate\n1;2;3;2016-05-09\n")
    with pytest.raises(ValueError, match="sessionId.*snake_case.*found"):
        read_diginetica_views(path)


def test_read_retailrocket_events(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("timestamp,visitorid,event,itemid,transactionid\n"
                    "1433221332117,257597,view,355908,\n"
                    "1433224214164,992329,addtocart,248676,\n"
                    "1433221999827,111016,transaction,5206,4000\n")
    events = read_retailrocket_events(path)
    assert events["Time"].iloc[0] == pytest.approx(1433221332.117)
    assert events["TransactionId"].isna().tolist() == [True, True, False]
    views = read_retailrocket_events(path, event_types=["view"])
    assert views["ItemId"].tolist() == [355908]


def test_read_lastfm_1k(tmp_path):
    path = tmp_path / "userid-timestamp-artid-artname-traid-traname.tsv"
    path.write_text(
        "user_000001\t2009-05-04T23:08:57Z\tf1b1cf71\tDeep Dish\t\tFuck Me Im Famous\n"
        "user_000001\t2009-05-04T13:54:10Z\ta7f7df4a\t坂本龍一\tf7c1f8f8\tComposition 0919\n"
        'user_000002\t2009-05-04T13:52:04Z\t\tSome "Band"\tbad\textra\tfield\n')
    tracks = read_lastfm_1k(path)
    assert tracks["ItemId"].tolist() == ["Deep Dish - Fuck Me Im Famous", "f7c1f8f8"]
    assert tracks["Time"].iloc[0] == pytest.approx(pd.Timestamp("2009-05-04T23:08:57Z")
                                                   .timestamp())
    assert read_lastfm_1k(path, item="artist")["ItemId"].tolist() == ["f1b1cf71", "a7f7df4a"]


@pytest.mark.realdata
def test_read_movielens_latest_small():
    folder = SHARED_DATA / "ml-latest-small"
    if not folder.is_dir():
        pytest.skip("real data not found")
    ratings = read_movielens_ratings(folder / "ratings.csv")
    # The counts of ../shared/data/ml-latest-small/MANIFEST.md.
    assert (len(ratings), ratings["UserId"].nunique(), ratings["ItemId"].nunique()) == \
        (100_004, 671, 9_066)
    assert pd.to_datetime(ratings["Time"].min(), unit="s").date().isoformat() == "1995-01-09"
    movies = read_movielens_movies(folder / "movies.csv")
    assert len(movies) == 9_125 and movies.loc[1, "year"] == 1995
    assert "Animation" in movies.loc[1, "genres"].split("|")
    tags = read_movielens_tags(folder / "tags.csv")
    assert len(tags) == 1_296


def test_read_movielens_dat_format(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n")
    (tmp_path / "movies.dat").write_bytes("1::Caf\xe9 (1995)::Comedy|Drama\n".encode("latin-1"))
    ratings = read_movielens_ratings(tmp_path / "ratings.dat")
    assert ratings.to_numpy().tolist() == [[1, 1193, 5.0, 978300760], [1, 661, 3.0, 978302109]]
    movies = read_movielens_movies(tmp_path / "movies.dat")
    assert movies.loc[1, "title"] == "Caf\xe9 (1995)" and movies.loc[1, "year"] == 1995


@pytest.mark.parametrize("topic_strength", [1.0, 0.6, 0.0])
def test_topic_strength_sets_how_often_a_click_stays_in_the_current_topic(topic_strength):
    events, features = make_sessions(n_sessions=3000, n_items=2000, n_topics=50,
                                     transition_strength=0.0, topic_strength=topic_strength,
                                     feature_noise=0.0, return_item_features=True,
                                     random_state=0)
    topic = features.to_numpy().argmax(axis=1)[events["ItemId"].to_numpy()]
    later = events.groupby("SessionId").cumcount().to_numpy() > 0
    previous = np.r_[-1, topic[:-1]]
    stay = (topic[later] == previous[later]).mean()
    # A wandering draw lands in the current topic by chance once in 50.
    expected = topic_strength + (1 - topic_strength) / 50
    assert abs(stay - expected) < 0.02, stay
    # The session moves with its clicks: after a wandering click, the next one stays in
    # the new topic, not the session's first.
    first = topic[events.groupby("SessionId").cumcount().to_numpy() == 0]
    session_first = np.repeat(first, events.groupby("SessionId").size().to_numpy())
    in_first = (topic[later] == session_first[later]).mean()
    if 0 < topic_strength < 1:
        assert in_first < stay - 0.05, (in_first, stay)


def test_topic_strength_is_a_probability():
    with pytest.raises(ValueError, match="topic_strength"):
        make_sessions(n_sessions=10, topic_strength=-0.1)
