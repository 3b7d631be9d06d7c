"""Realistic task bodies for bench/compare.sh (stdlib only).

Shapes from LIVEPEER-API.md §5 and src/demo/mod.rs (non-admin views, compact JSON as the API
sends them), 1-2 KB each.

  tasks.py files DIR N     writes DIR/api/task/done-{0..N-1} (completed: upload, clip, IPFS
                           export, transcode-file in turn) and DIR/api/task/run-{0..N-1}
                           (running uploads); prints the mean body sizes as JSON
  tasks.py template        prints a completed upload body with `$1` where the id goes, for
                           nginx's `return 200 '...'` (a generator upstream: every id has its
                           own body)
  tasks.py body ID PHASE   prints one body (the slow upstream uses body())
"""
import json
import os
import sys

USER = "2b7e1516-28ae-4d2a-a6ab-f7158809cf4f"
PROJECT = "b3c1e2d4-5f60-4718-8a9b-0c1d2e3f4a5b"
CID = "bafybeihhhndfxtursaadlvhuptet6zqni4uhg7ornjtlp5qwngv33ipv6m"
GATEWAY = "https://ipfs.livepeer.studio/ipfs"


def video_spec():
    return {"format": "mp4", "duration": 23.83, "bitrate": 1128000, "tracks": [
        {"type": "video", "codec": "h264", "duration": 23.83, "bitrate": 1000000,
         "width": 1920, "height": 1080, "pixelFormat": "yuv420p", "fps": 30},
        {"type": "audio", "codec": "aac", "duration": 23.83, "bitrate": 128000,
         "channels": 2, "sampleRate": 44100}]}


def hashes(task_id):
    import hashlib
    seed = task_id.encode()
    return [{"hash": hashlib.md5(seed).hexdigest(), "algorithm": "md5"},
            {"hash": hashlib.sha256(seed).hexdigest(), "algorithm": "sha256"}]


FILES = [{"type": "catalyst_hls_manifest", "path": "hls/index.m3u8"},
         {"type": "static_transcoded_mp4", "path": "static720p0.mp4"},
         {"type": "static_transcoded_mp4", "path": "static360p0.mp4"},
         {"type": "source_video", "path": "video"},
         {"type": "thumbnails_vtt", "path": "thumbnails/thumbnails.vtt"}]


def asset_id(task_id):
    # A distinct, uuid-shaped asset id per task.
    h = f"{abs(hash(task_id)) & ((1 << 128) - 1):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


def upload(task_id, phase, n=0):
    t0 = 1717000000000 + n * 1000
    body = {"id": task_id, "type": "upload", "userId": USER, "projectId": PROJECT,
            "outputAssetId": asset_id(task_id), "createdAt": t0, "scheduledAt": t0 + 20,
            "params": {"upload": {"url": f"https://example.com/uploads/{task_id}/source.mp4",
                                  "thumbnails": True}}}
    if phase == "completed":
        body["status"] = {"phase": "completed", "updatedAt": t0 + 60000}
        body["output"] = {"upload": {"assetSpec": {
            "name": f"{task_id}.mp4", "type": "video", "size": 84934509,
            "hash": hashes(task_id), "files": FILES,
            "videoSpec": video_spec()}}}
    else:
        body["status"] = {"phase": phase, "updatedAt": t0 + 5000, "retries": 0,
                          "progress": 0.45}
    return body


def clip(task_id, n):
    t0 = 1717005000000 + n * 1000
    return {"id": task_id, "type": "clip", "userId": USER, "projectId": PROJECT,
            "outputAssetId": asset_id(task_id), "requesterId": "c0ffee5e1f3a9b2d4c6e8f0a1b3c5d7e",
            "createdAt": t0, "scheduledAt": t0 + 10,
            "params": {"clip": {
                "url": "https://recordings-cdn.example/hls/abcd1234efgh5678/"
                       "d32ae9e6-c459-4931-9898-e86e2f5e7e16/output.m3u8",
                "clipStrategy": {"playbackId": "abcd1234efgh5678",
                                 "startTime": t0 - 90000, "endTime": t0 - 30000},
                "sessionId": "d32ae9e6-c459-4931-9898-e86e2f5e7e16",
                "inputId": "4f5a6b7c-8d9e-4f0a-b1c2-d3e4f5a6b7c8",
                "sourceObjectStoreId": "recordings-os-id"}},
            "status": {"phase": "completed", "updatedAt": t0 + 45000},
            "output": {"clip": {"videoFilePath": "", "metadataFilePath": "", "assetSpec": {
                "name": "clip-abcd1234efgh5678", "type": "video", "size": 4718592,
                "hash": hashes(task_id), "files": FILES[:2],
                "videoSpec": video_spec()}}}}


def ipfs_export(task_id, n):
    t0 = 1717003000000 + n * 1000
    return {"id": task_id, "type": "export", "userId": USER, "projectId": PROJECT,
            "inputAssetId": asset_id(task_id), "createdAt": t0, "scheduledAt": t0 + 10,
            "params": {"export": {"ipfs": {"nftMetadata": {"name": f"Video {n}"}}}},
            "status": {"phase": "completed", "updatedAt": t0 + 30000},
            "output": {"export": {"ipfs": {
                "videoFileCid": CID, "videoFileUrl": f"ipfs://{CID}",
                "videoFileGatewayUrl": f"{GATEWAY}/{CID}",
                "nftMetadataCid": "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",
                "nftMetadataUrl": "ipfs://bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",
                "nftMetadataGatewayUrl": f"{GATEWAY}/bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",
                "videoFileHash": hashes(task_id)}}}}


def transcode(task_id, n):
    t0 = 1717004000000 + n * 1000
    return {"id": task_id, "type": "transcode-file", "userId": USER, "projectId": PROJECT,
            "createdAt": t0, "scheduledAt": t0 + 10,
            "params": {"transcode-file": {
                "input": {"url": "s3+https://***:***@in.example.com/inbucket/input/video.mp4"},
                "storage": {"url": "s3+https://***:***@endpoint.com/mybucket"},
                "outputs": {"hls": {"path": "/output/hls"}, "mp4": {"path": "/output/mp4"}},
                "profiles": [{"name": "720p0", "width": 1280, "height": 720,
                              "bitrate": 3000000, "fps": 30}]}},
            "status": {"phase": "completed", "updatedAt": t0 + 300000},
            "output": {"transcodeFile": {
                "hls": {"path": "/output/hls/index.m3u8"},
                "mp4": [{"path": "/output/mp4/720p0.mp4"}],
                "request_id": "a1b2c3d4e5f6", "input_video": {"duration": 23.83,
                                                              "size": 84934509},
                "hashes": hashes(task_id)}}}


def completed(task_id, n):
    return [lambda: upload(task_id, "completed", n), lambda: clip(task_id, n),
            lambda: ipfs_export(task_id, n), lambda: transcode(task_id, n)][n % 4]()


def body(task_id, phase, n=0):
    b = completed(task_id, n) if phase == "completed" else upload(task_id, phase, n)
    return json.dumps(b, separators=(",", ":")).encode()


def main():
    cmd = sys.argv[1]
    if cmd == "files":
        root, n = sys.argv[2], int(sys.argv[3])
        d = os.path.join(root, "api", "task")
        os.makedirs(d, exist_ok=True)
        sizes = {"done": 0, "run": 0}
        for i in range(n):
            for kind, phase in (("done", "completed"), ("run", "running")):
                b = body(f"{kind}-{i}", phase, i)
                sizes[kind] += len(b)
                with open(os.path.join(d, f"{kind}-{i}"), "wb") as f:
                    f.write(b)
        print(json.dumps({k: round(v / n) for k, v in sizes.items()}))
    elif cmd == "template":
        b = upload("@ID@", "completed").copy()
        b["outputAssetId"] = "@ID@"
        text = json.dumps(b, separators=(",", ":"))
        assert "'" not in text and "$" not in text and "\\" not in text
        print(text.replace("@ID@", "$1"))
    elif cmd == "body":
        sys.stdout.write(body(sys.argv[2], sys.argv[3]).decode())
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
